"""Channels: one IM bot connection each (platform, config, encrypted secrets, default agent)."""
