"""imgate admin-api: channels, agents and their live status over HTTP."""
