"""Re-encrypting every stored secret under the newest key of IMGATE_SECRET_KEYS."""
