"""Visual summaries of a class: regions -> similarity graph -> affinity propagation -> pruning -> tags."""
