"""Text generation: OpenAI chat/completions schemas, the ONNX generation loop, the light/heavy router."""
