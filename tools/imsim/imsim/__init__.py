"""imsim."""
