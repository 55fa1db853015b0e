"""Embedding cache: frozen encoders' outputs stored on disk, keyed by content, encoder and settings."""
from crossfuse.cache.store import EmbeddingStore, clear, default_root, namespaces

__all__ = ["EmbeddingStore", "clear", "default_root", "namespaces"]
