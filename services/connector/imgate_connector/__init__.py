"""imgate_connector."""
