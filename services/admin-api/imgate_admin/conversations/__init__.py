"""Conversations: list by channel or user, read the transcript, close."""
