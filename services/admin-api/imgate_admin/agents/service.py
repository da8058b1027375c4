"""Agent use cases over the database."""

from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.agents.schemas import (
    LOCAL_DEFAULT_MODEL,
    AgentCreate,
    AgentUpdate,
    Provider,
    provider_problem,
)
from imgate_admin.audit.service import record_action
from imgate_admin.channels.control import ChannelControl
from imgate_admin.destinations import require_secrets_follow, unmask_url
from imgate_admin.errors import invalid_field
from imgate_common.db.models import Agent, Channel, utcnow
from imgate_common.errors import Conflict, NotFound
from imgate_common.messages import ConfigKind, ControlAction
from imgate_common.secrets import MASK, SecretBox

log = structlog.get_logger()

# Optional budget fields: copied only when given, so the table's defaults stay the one source.
OPTIONAL_FIELDS = (
    "system_prompt",
    "temperature",
    "max_output_tokens",
    "max_turns",
    "max_prompt_tokens",
    "timeout_s",
    "supports_images",
)
PLAIN_FIELDS = ("name", "provider", "model", "base_url", *OPTIONAL_FIELDS)
KEY_DESTINATION = ("provider", "base_url")


def _key_destination(provider: str, base_url: str | None) -> dict[str, Any]:
    """Where the agent's key is sent: nowhere for the local model."""
    return {} if provider == Provider.LOCAL else {"provider": provider, "base_url": base_url}


def _audit_view(agent: Agent) -> dict[str, Any]:
    """What the audit log keeps of an agent: everything but the key, of which only its presence."""
    return {
        "name": agent.name,
        "provider": agent.provider,
        "model": agent.model,
        "base_url": agent.base_url,
        "has_api_key": agent.api_key_enc is not None,
    }


async def _name_taken(session: AsyncSession, name: str, other_than: int | None = None) -> bool:
    query = select(Agent.id).where(col(Agent.name) == name)
    if other_than is not None:
        query = query.where(col(Agent.id) != other_than)
    return (await session.exec(query)).first() is not None


async def create_agent(session: AsyncSession, box: SecretBox, actor: str, body: AgentCreate) -> Agent:
    if await _name_taken(session, body.name):
        raise Conflict(f"an agent named {body.name!r} already exists")
    assert body.model is not None  # AgentCreate fills it in for every provider
    agent = Agent(
        name=body.name,
        provider=body.provider.value,
        model=body.model,
        base_url=body.base_url,
        api_key_enc=box.encrypt(body.api_key.get_secret_value()) if body.api_key else None,
        **{f: getattr(body, f) for f in OPTIONAL_FIELDS if getattr(body, f) is not None},
    )
    session.add(agent)
    try:
        await session.flush()
        record_action(session, actor, "agent.create", f"agent:{agent.id}", _audit_view(agent))
        await session.commit()
    except IntegrityError:
        # Lost a race with a concurrent create of the same name (the pre-check passed for both).
        await session.rollback()
        if await _name_taken(session, body.name):
            raise Conflict(f"an agent named {body.name!r} already exists") from None
        raise
    log.info("agent_created", agent_id=agent.id, provider=agent.provider, model=agent.model)
    return agent


async def list_agents(session: AsyncSession) -> Sequence[Agent]:
    return (await session.exec(select(Agent).order_by(col(Agent.id)))).all()


async def get_agent(session: AsyncSession, agent_id: int) -> Agent:
    agent = await session.get(Agent, agent_id)
    if agent is None:
        raise NotFound(f"agent {agent_id} does not exist")
    return agent


async def _channels_using(session: AsyncSession, agent_id: int) -> Sequence[Channel]:
    query = select(Channel).where(col(Channel.default_agent_id) == agent_id).order_by(col(Channel.id))
    return (await session.exec(query)).all()


async def update_agent(
    session: AsyncSession,
    box: SecretBox,
    control: ChannelControl,
    actor: str,
    agent_id: int,
    body: AgentUpdate,
) -> Agent:
    agent = await get_agent(session, agent_id)
    given = body.model_fields_set
    if body.name is not None and await _name_taken(session, body.name, other_than=agent_id):
        raise Conflict(f"an agent named {body.name!r} already exists")
    changes: dict[str, Any] = {}
    for field in PLAIN_FIELDS:
        if field not in given:
            continue
        value = getattr(body, field)
        if field == "base_url":
            value = unmask_url(value, agent.base_url, ("base_url",))
        if value is None and field != "base_url":
            raise invalid_field((field,), "may not be null; leave it out to keep the stored value")
        changes[field] = value.value if isinstance(value, Provider) else value
    if "provider" in changes and changes["provider"] != agent.provider and "model" not in changes:
        # One provider's model name means nothing to another: local falls back to the bundled
        # model, a hosted provider needs its model named.
        changes["model"] = LOCAL_DEFAULT_MODEL if changes["provider"] == Provider.LOCAL else None
    merged = {"provider": agent.provider, "model": agent.model, "base_url": agent.base_url, **changes}
    problem = provider_problem(merged["provider"], merged["model"], merged["base_url"])
    if problem:
        raise invalid_field(("provider",), problem)
    entered = "api_key" in given and (
        body.api_key is None or body.api_key.get_secret_value() not in ("", MASK)
    )
    if merged["provider"] != Provider.LOCAL and agent.api_key_enc is not None and not entered:
        require_secrets_follow(
            _key_destination(agent.provider, agent.base_url),
            _key_destination(merged["provider"], merged["base_url"]),
            KEY_DESTINATION,
            ["api_key"],
        )

    key_changed = False
    if "api_key" in given:
        if body.api_key is None:
            key_changed = agent.api_key_enc is not None
            agent.api_key_enc = None
        elif body.api_key.get_secret_value() not in ("", MASK):
            agent.api_key_enc = box.encrypt(body.api_key.get_secret_value())
            key_changed = True
    for field, value in changes.items():
        setattr(agent, field, value)
    agent.updated_at = utcnow()
    session.add(agent)
    changed = sorted(f for f in changes) + (["api_key"] if key_changed else [])
    record_action(
        session, actor, "agent.update", f"agent:{agent.id}", {"changed": changed, **_audit_view(agent)}
    )
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"an agent named {body.name!r} already exists") from None
    log.info("agent_updated", agent_id=agent.id, changed=changed)
    await control.announce(ConfigKind.AGENT, agent.id)  # runners cache agents
    # Runners load the agent for every run, so the change applies to the next message anyway;
    # the reload tells each connector using it to re-read its channel at once.
    for channel in await _channels_using(session, agent_id):
        if channel.enabled and channel.id is not None:
            await control.send(channel.id, ControlAction.RELOAD)
    return agent


async def delete_agent(session: AsyncSession, actor: str, agent_id: int) -> None:
    agent = await get_agent(session, agent_id)
    users = await _channels_using(session, agent_id)
    if users:
        names = ", ".join(repr(c.name) for c in users)
        raise Conflict(f"agent {agent_id} is the default agent of channel(s) {names}; change them first")
    await session.delete(agent)
    record_action(session, actor, "agent.delete", f"agent:{agent_id}", {"name": agent.name})
    try:
        await session.commit()
    except IntegrityError:
        # A channel picked this agent between our check and the delete.
        await session.rollback()
        raise Conflict(f"agent {agent_id} is in use by a channel; change it first") from None
    log.info("agent_deleted", agent_id=agent_id)
