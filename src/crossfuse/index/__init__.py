"""Vector indexes over embeddings: exact or approximate (FAISS IVF / HNSW), saved and loaded."""
from crossfuse.index.vector_index import INDEX_KINDS, VectorIndex, faiss_available

__all__ = ["INDEX_KINDS", "VectorIndex", "faiss_available"]
