"""The light path: embeddings, classification, model list and health, as data (no HTTP)."""
