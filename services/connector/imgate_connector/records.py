"""The channels the database describes, as the connector applies them."""

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.channels import ChannelSpec, channel_spec
from imgate_common.db.models import Channel
from imgate_common.secrets import SecretBox

log = structlog.get_logger()


@dataclass(frozen=True)
class ChannelRecord:
    """A channel as the database describes it, with the knobs the connector applies."""

    spec: ChannelSpec
    card_qps: float | None = None
    language: str | None = None

    def fingerprint(self) -> tuple[Any, ...]:
        """What requires restarting the channel when it changes."""
        return (*self.spec.fingerprint(), self.card_qps, self.language)


def channel_record(row: Channel, box: SecretBox) -> ChannelRecord:
    qps = getattr(row, "card_qps", None)  # columns newer than some databases: read if present
    return ChannelRecord(
        channel_spec(row, box), float(qps) if qps else None, getattr(row, "language", None) or None
    )


async def load_records(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox
) -> dict[int, ChannelRecord]:
    async with sessions() as session:
        rows = (await session.exec(select(Channel))).all()
    records = {}
    for row in rows:
        try:
            record = channel_record(row, box)
        except ValueError as exc:  # a secret no configured key decrypts: skip it, keep the rest
            log.error("channel_unreadable", channel_id=row.id, error=str(exc))
            continue
        records[record.spec.id] = record
    return records


class ChannelCatalog:
    """The channel records as last read from the database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> None:
        self._sessions = sessions
        self._box = box
        self.records: dict[int, ChannelRecord] = {}

    async def refresh(self) -> dict[int, ChannelRecord]:
        self.records = await load_records(self._sessions, self._box)
        return self.records

    def get(self, channel_id: int) -> ChannelRecord | None:
        return self.records.get(channel_id)

    def enabled(self) -> list[int]:
        return [c for c, r in self.records.items() if r.spec.enabled]
