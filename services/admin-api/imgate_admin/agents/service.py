"""Agent use cases over the database."""

from collections.abc import Sequence

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.agents.schemas import AgentCreate
from imgate_admin.audit import record_action
from imgate_common.db.models import Agent
from imgate_common.errors import Conflict, NotFound
from imgate_common.secrets import SecretBox

log = structlog.get_logger()

# Optional budget fields: copied only when given, so the table's defaults stay the one source.
OPTIONAL_FIELDS = (
    "system_prompt",
    "temperature",
    "max_output_tokens",
    "max_turns",
    "max_prompt_tokens",
    "timeout_s",
)


async def _name_taken(session: AsyncSession, name: str) -> bool:
    found = await session.exec(select(Agent.id).where(col(Agent.name) == name))
    return found.first() is not None


async def create_agent(session: AsyncSession, box: SecretBox, body: AgentCreate) -> Agent:
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
        record_action(
            session,
            "agent.create",
            f"agent:{agent.id}",
            {
                "name": agent.name,
                "provider": agent.provider,
                "model": agent.model,
                "base_url": agent.base_url,
                "has_api_key": agent.api_key_enc is not None,
            },
        )
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
