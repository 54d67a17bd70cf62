"""Fourier token mixers."""
