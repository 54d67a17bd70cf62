"""Softmax attention and its direct variants."""
