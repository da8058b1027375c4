"""Reading channel and agent rows with their secrets decrypted, for the services that need them."""

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Agent, Channel
from imgate_common.secrets import SecretBox
from imgate_common.settings import CommonSettings

# (table, column) pairs that hold Fernet tokens.
ENCRYPTED_COLUMNS: tuple[tuple[type[Any], str], ...] = (
    (Agent, "api_key_enc"),
    (Channel, "secrets_enc"),
    (Channel, "user_mapping_secrets_enc"),
)


@dataclass(frozen=True)
class ChannelSpec:
    """A channel as a connector runs it: public config merged with its decrypted secrets."""

    id: int
    name: str
    platform: str
    enabled: bool
    default_agent_id: int | None
    session_scope: str
    config: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> tuple[Any, ...]:
        """What requires reconnecting when it changes."""
        return (self.platform, self.enabled, sorted(self.config.items()))


def channel_spec(row: Channel, box: SecretBox) -> ChannelSpec:
    assert row.id is not None
    return ChannelSpec(
        id=row.id,
        name=row.name,
        platform=row.platform,
        enabled=row.enabled,
        default_agent_id=row.default_agent_id,
        session_scope=row.session_scope,
        config={**row.config, **box.decrypt_json(row.secrets_enc)},
    )


async def load_channel(session: AsyncSession, box: SecretBox, channel_id: int) -> ChannelSpec | None:
    row = await session.get(Channel, channel_id)
    return channel_spec(row, box) if row else None


async def load_channels(session: AsyncSession, box: SecretBox) -> list[ChannelSpec]:
    rows = (await session.exec(select(Channel))).all()
    return [channel_spec(row, box) for row in rows]


def agent_api_key(agent: Agent, box: SecretBox) -> str | None:
    return box.decrypt(agent.api_key_enc) if agent.api_key_enc else None


async def stored_secrets(session: AsyncSession) -> dict[str, str]:
    """Every encrypted value the database holds, by where it is ("channels.secrets_enc#3")."""
    found: dict[str, str] = {}
    for table, column in ENCRYPTED_COLUMNS:
        attr = getattr(table, column)
        rows = (await session.exec(select(table.id, attr).where(col(attr).is_not(None)))).all()
        found.update({f"{table.__tablename__}.{column}#{row_id}": token for row_id, token in rows})
    return found


async def load_secret_box(settings: CommonSettings, sessions: async_sessionmaker[AsyncSession]) -> SecretBox:
    """The service's key ring, refused at start (`UnreadableSecrets`) when it cannot read what
    the database holds."""
    async with sessions() as session:
        return SecretBox.from_settings(settings, await stored_secrets(session))
