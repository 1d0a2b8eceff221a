"""Region similarity: faiss candidates re-weighted by flow (displacement) consistency."""
