"""Clustering of the region graph: sparse affinity propagation and summary pruning."""
