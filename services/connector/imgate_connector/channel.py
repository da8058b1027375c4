"""One channel running here: its adapter, renderer and reply consumer, wired and torn down.

Each part is entered into an exit stack as it is made, so a channel that fails half-way
through starting is taken apart again, and a stopping one is taken apart in reverse order:
the connection first (nothing new comes in), then the reply consumer, the renderer, the gauge.
"""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.js import JetStreamContext

from imgate_common.status import ChannelStatusStore
from imgate_connector.health import ChannelHealth
from imgate_connector.inbound import InboundPublisher
from imgate_connector.lease import ChannelLease
from imgate_connector.ledger import FinalsOrder, ReplyLedger
from imgate_connector.mending import MendPolicy
from imgate_connector.platforms.base import PlatformAdapter
from imgate_connector.platforms.registry import ADAPTERS
from imgate_connector.records import ChannelRecord
from imgate_connector.rendering import CardRenderer
from imgate_connector.replies import ReplyConsumer, run_history
from imgate_connector.resources import ConnectorResources
from imgate_connector.settings import ConnectorSettings
from imgate_connector.wording import wording_for

log = structlog.get_logger()


@dataclass
class RunningChannel:
    record: ChannelRecord
    adapter: PlatformAdapter
    renderer: CardRenderer
    health: ChannelHealth
    # What `stop` takes apart, in reverse order of making.
    parts: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack, repr=False)
    drain_s: float = 0.0

    async def stop(self, drain_s: float = 0.0) -> None:
        """Take the channel apart; its connection lets frames being published finish for `drain_s`."""
        self.drain_s = drain_s
        await self.parts.aclose()

    async def stop_adapter(self) -> None:
        await self.adapter.stop(self.drain_s)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class ChannelWiring:
    """Builds a running channel from its record, with the parts every channel of this replica
    shares (the bus, the inbound publisher, the process's clients, the lease)."""

    def __init__(
        self,
        settings: ConnectorSettings,
        js: JetStreamContext,
        lease: ChannelLease,
        status: ChannelStatusStore,
        resources: ConnectorResources,
        on_change: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._js = js
        self._lease = lease
        self._status = status
        self._resources = resources
        self._on_change = on_change
        self._publisher = InboundPublisher(
            js,
            settings.publish_timeout_s,
            settings.publish_retry_for_s,
            settings.publish_max_waiting_per_conversation,
        )

    def settings_for(self, record: ChannelRecord) -> ConnectorSettings:
        """The replica's settings with the channel's own knobs applied."""
        overrides: dict[str, Any] = {}
        if record.card_qps:
            overrides["card_qps"] = record.card_qps
        if record.language:
            overrides["language"] = record.language
        return self._settings.model_copy(update=overrides)

    async def start(self, record: ChannelRecord) -> RunningChannel:
        spec = record.spec
        adapter_cls = ADAPTERS.get(spec.platform)
        if adapter_cls is None:
            raise ValueError(f"no adapter for platform {spec.platform!r}")
        settings = self.settings_for(record)
        async with contextlib.AsyncExitStack() as parts:
            health = ChannelHealth(channel_id=spec.id, owner=self._lease.owner, on_change=self._on_change)
            parts.callback(health.retire)
            adapter = adapter_cls(spec, settings, self._publisher, health, self._resources)
            # Every side effect of the channel (ACK, card call, ledger write) checks this holding.
            lease = self._lease.fenced(spec.id)
            adapter.fence = adapter.surface.fence = lease

            async def history(run_id: str) -> list[Any]:
                return await run_history(self._js, spec.id, run_id)

            renderer = CardRenderer(
                adapter.surface,
                health,
                settings.card_update_interval_s,
                ledger=ReplyLedger(self._resources.redis, self._resources.redis_prefix, lease),
                order=FinalsOrder(self._resources.redis, self._resources.redis_prefix, lease),
                history=history,
                wording=wording_for(settings.language),
                scope=spec.session_scope,
                final_order_wait_s=settings.final_order_wait_s,
                mend=MendPolicy(
                    first_retry_s=settings.card_mend_first_s, retry_for_s=settings.card_mend_for_s
                ),
            )
            parts.push_async_callback(renderer.close)
            adapter.on_accepted = renderer.accepted
            consumer = ReplyConsumer(
                self._js,
                spec.id,
                renderer,
                ack_wait_s=settings.reply_ack_wait_s,
                forget_idle_s=settings.run_idle_forget_s,
                status=self._status,
                poison_mark=settings.chaos_poison_reply_mark,
            )
            replies = asyncio.create_task(consumer.run(), name=f"replies-{spec.id}")
            parts.push_async_callback(_cancel, replies)
            channel = RunningChannel(record, adapter, renderer, health)
            # Pushed before the start: a start that fails stops the adapter again.
            parts.push_async_callback(channel.stop_adapter)
            await adapter.start()
            channel.parts = parts.pop_all()
        return channel

    async def close(self) -> None:
        """After the last channel stopped: the inbound publisher's pending work ends."""
        await self._publisher.close()
