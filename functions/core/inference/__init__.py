"""The torch-free inference runtime: ONNX encoder and generator, bundle manifest, generation spec, model store."""
