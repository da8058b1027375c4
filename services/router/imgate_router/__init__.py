"""imgate_router."""
