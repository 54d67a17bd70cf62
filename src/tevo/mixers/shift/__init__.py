"""Parameter-free and pooling token mixers over a 2-D grid: shift and pool."""
