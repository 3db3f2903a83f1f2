"""Cirrus benchmarks: speed, memory, parity, cold start and cost of the shipped model vs PyTorch (`python -m bench`)."""
