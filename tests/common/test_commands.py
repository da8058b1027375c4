"""What counts as a command: the one decision the connector and the router share."""

import pytest

from imgate_common.commands import Command, parse_command


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/new", Command.NEW),
        ("  /STOP  ", Command.STOP),
        ("@Alice /stop", Command.STOP),
        ("@bot @Alice /status please", Command.STATUS),
        ("/help me", Command.HELP),
        ("/etc/hosts is what file?", None),
        ("please /stop", None),
        ("@Alice", None),
        ("", None),
    ],
)
def test_commands_are_known_words_first_after_any_mentions(text: str, command: Command | None) -> None:
    assert parse_command(text) == command
