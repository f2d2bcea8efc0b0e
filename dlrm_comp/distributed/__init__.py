"""Model-parallel embeddings: process groups, table placement, the compressed all-to-all."""
