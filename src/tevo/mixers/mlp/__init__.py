"""MLP-style token mixers: spatial gating, hypernetwork token MLPs."""
