"""Feed-forward layers and activations."""
