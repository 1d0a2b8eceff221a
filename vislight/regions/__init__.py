"""Salient regions of a sharp mask: connected components and part proposals inside the mask."""
