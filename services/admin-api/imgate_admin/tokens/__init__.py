"""API tokens: bearer tokens beside the bootstrap ADMIN_TOKEN, stored as hashes, revocable."""
