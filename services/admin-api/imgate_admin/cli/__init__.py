"""`imgate-admin`: a command-line client of the admin API, for operators and scripts."""

from typing import Annotated

import typer

from imgate_admin.cli import access, agents, channels, people
from imgate_admin.cli.state import CliState

app = typer.Typer(
    name="imgate-admin",
    help="Manage an imgate installation through its admin API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # tracebacks could print locals, tokens among them
)
app.add_typer(channels.app, name="channels")
app.add_typer(agents.app, name="agents")
app.add_typer(access.tokens, name="tokens")
app.add_typer(people.users, name="users")
app.add_typer(people.conversations, name="conversations")
app.add_typer(access.secrets, name="secrets")


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="ADMIN_URL", help="The admin API.")] = "http://127.0.0.1:8780",
    token: Annotated[
        str, typer.Option(envvar="ADMIN_TOKEN", show_default=False, help="Bearer token (or ADMIN_TOKEN).")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    state = CliState(url=url, token=token, json=as_json)
    ctx.obj = state
    ctx.call_on_close(state.close)


def main() -> None:
    app()
