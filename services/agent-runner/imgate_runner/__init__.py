"""imgate_runner."""
