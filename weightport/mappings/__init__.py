"""What tensors mean: invertible transforms and per-layer rules (no framework imports)."""
