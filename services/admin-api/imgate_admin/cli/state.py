"""What every command shares: where the API is, the token, the output format, the client."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from imgate_admin.cli.client import AdminClient, CliError
from imgate_admin.cli.output import print_json

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of text.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@dataclass
class CliState:
    url: str
    token: str
    json: bool = False
    _client: AdminClient | None = field(default=None, repr=False)

    def client(self) -> AdminClient:
        if not self.token:
            raise CliError("no token: pass --token or set ADMIN_TOKEN")
        if self._client is None:
            self._client = AdminClient(self.url, self.token)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def state_of(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    assert isinstance(state, CliState)
    return state


@contextmanager
def api(ctx: typer.Context) -> Iterator[AdminClient]:
    """The client; a failure is printed to stderr and ends the command with exit code 1."""
    try:
        yield state_of(ctx).client()
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def show(ctx: typer.Context, as_json: bool, data: Any, text: str) -> None:
    if as_json or state_of(ctx).json:
        print_json(data)
    else:
        typer.echo(text)


def parse_pairs(pairs: list[str], option: str) -> dict[str, Any]:
    """KEY=VALUE options into a dict; "true"/"false" and integers keep their JSON type."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        values[key.strip()] = _typed(value)
    return values


def _typed(value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    if value.isdigit():
        return int(value)
    return value
