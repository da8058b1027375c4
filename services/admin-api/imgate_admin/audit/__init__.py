"""The audit log: who changed what, never with secret values."""
