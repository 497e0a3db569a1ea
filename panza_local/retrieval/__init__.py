"""Retrieval: the index of past mail and documents (Chroma), embeddings, chunking."""
