"""model_export: Hugging Face model -> int8 ONNX bundle behind an accuracy gate -> S3 registry."""
