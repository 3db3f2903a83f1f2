"""Cirrus runtime core, torch-free: errors, settings, observability, auth, and one package per job (see docs/ARCHITECTURE.md)."""
