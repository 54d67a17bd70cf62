"""Models: one Block, one stack, and the architectures built from them."""
