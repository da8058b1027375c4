"""imgate_common."""
