"""Cirrus runtime core: service logic, ONNX runtime, model store, adapters. Torch-free."""
