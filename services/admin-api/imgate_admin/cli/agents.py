"""`imgate-admin agents …`"""

from typing import Annotated, Any

import typer

from imgate_admin.cli.client import ApiError
from imgate_admin.cli.output import fields, table
from imgate_admin.cli.state import JsonOpt, YesOpt, api, show

app = typer.Typer(help="List, create, change, test and delete agents.", no_args_is_help=True)

ApiKeyOpt = Annotated[
    str | None, typer.Option("--api-key", help='The provider key; "-" to type it in hidden.')
]


def _key(value: str | None) -> str | None:
    return typer.prompt("api key", hide_input=True, err=True) if value == "-" else value


def _settings(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command("list")
def list_agents(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    with api(ctx) as client:
        agents = client.get("/agents")
    rows = [
        (a["id"], a["name"], a["provider"], a["model"], a["base_url"] or "", a["api_key"] or "")
        for a in agents
    ]
    show(ctx, as_json, agents, table(rows, ("ID", "NAME", "PROVIDER", "MODEL", "BASE URL", "KEY")))


@app.command("show")
def show_agent(ctx: typer.Context, agent_id: int, as_json: JsonOpt = False) -> None:
    with api(ctx) as client:
        agent = client.get(f"/agents/{agent_id}")
    show(ctx, as_json, agent, fields(agent))


@app.command("create")
def create_agent(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Unique name.")],
    provider: Annotated[str, typer.Option(help="local or openai (any OpenAI-compatible API).")] = "local",
    model: Annotated[str | None, typer.Option(help="Model name.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="API base URL, e.g. https://api.openai.com/v1.")
    ] = None,
    api_key: ApiKeyOpt = None,
    system_prompt: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: float | None = None,
    max_output_tokens: int | None = None,
    max_turns: int | None = None,
    max_prompt_tokens: int | None = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Run timeout in seconds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    body = _settings(
        name=name,
        provider=provider,
        model=model,
        base_url=base_url,
        api_key=_key(api_key),
        system_prompt=system_prompt,
        temperature=temperature,
        max_output_tokens=max_output_tokens,
        max_turns=max_turns,
        max_prompt_tokens=max_prompt_tokens,
        timeout_s=timeout,
    )
    with api(ctx) as client:
        agent = client.post("/agents", body)
    show(ctx, as_json, agent, fields(agent))


@app.command("update")
def update_agent(
    ctx: typer.Context,
    agent_id: int,
    name: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: ApiKeyOpt = None,
    clear_api_key: Annotated[bool, typer.Option("--clear-api-key", help="Remove the stored key.")] = False,
    system_prompt: str | None = None,
    temperature: float | None = None,
    max_output_tokens: int | None = None,
    max_turns: int | None = None,
    max_prompt_tokens: int | None = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Run timeout in seconds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an agent; the key is kept unless --api-key or --clear-api-key is given."""
    body = _settings(
        name=name,
        provider=provider,
        model=model,
        base_url=base_url,
        api_key=_key(api_key),
        system_prompt=system_prompt,
        temperature=temperature,
        max_output_tokens=max_output_tokens,
        max_turns=max_turns,
        max_prompt_tokens=max_prompt_tokens,
        timeout_s=timeout,
    )
    if clear_api_key:
        body["api_key"] = None
    with api(ctx) as client:
        try:
            agent = client.patch(f"/agents/{agent_id}", body)
        except ApiError as exc:
            raise exc.with_reentry_hint(
                lambda _: "--api-key - (typed in hidden), or --clear-api-key"
            ) from None
    show(ctx, as_json, agent, fields(agent))


@app.command("delete")
def delete_agent(ctx: typer.Context, agent_id: int, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    if not yes:
        typer.confirm(f"Delete agent {agent_id}?", abort=True)
    with api(ctx) as client:
        client.delete(f"/agents/{agent_id}")
    show(ctx, as_json, {"deleted": agent_id}, f"agent {agent_id} deleted")


@app.command("test")
def test_agent(
    ctx: typer.Context,
    agent_id: int,
    prompt: Annotated[str | None, typer.Option(help="What to ask.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send one short prompt to the agent's model; exit code 1 when it failed."""
    with api(ctx) as client:
        result = client.post(f"/agents/{agent_id}/test", {"prompt": prompt} if prompt else None)
    text = f"{result['result']}: {result['message']}"
    if result.get("reply"):
        text += f"\n\n{result['reply']}"
    show(ctx, as_json, result, text)
    if result["result"] == "failed":
        raise typer.Exit(1)
