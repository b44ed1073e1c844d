"""Image loading and dataset readers."""
