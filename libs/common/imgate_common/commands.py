"""What a chat user's text means as a command: one decision for every service.

The connector opens no card for a command (the router answers it, or `/stop` ends another
run's card), and the router handles it; both ask `parse_command`, so they never disagree.
"""

from enum import StrEnum


class Command(StrEnum):
    NEW = "/new"
    STOP = "/stop"
    STATUS = "/status"
    HELP = "/help"


def parse_command(text: str) -> Command | None:
    """A command, also after leading @mentions (`@bot /new` in a group); case does not matter."""
    words = [w for w in text.strip().split() if not w.startswith("@")]
    if not words:
        return None
    try:
        return Command(words[0].lower())
    except ValueError:
        return None  # an unknown /word is ordinary text for the agent
