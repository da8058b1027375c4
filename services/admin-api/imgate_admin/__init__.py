"""imgate_admin."""
