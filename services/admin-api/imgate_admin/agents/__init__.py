"""Agents: which model answers, with which prompt and budget."""
