"""img-search: semantic image search with SigLIP-family embeddings."""

__version__ = "0.1.0"
