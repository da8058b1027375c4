"""IM platforms: one package each, with the same file names."""
