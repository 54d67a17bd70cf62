"""Shared primitives: the mixer context, masks, attention kernels, scans."""
