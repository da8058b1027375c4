"""A channel's websocket to its platform, kept up: reconnect, watchdog, handover.

One connection is live at a time. When the platform asks us to move (a "disconnect" notice),
the next connection opens first and the old one drains (the platform closes it, or we do after
`drain_timeout_s`). A watchdog replaces a socket that went half-dead (no frame and no pong for
`stale_after_s`), and failures back off exponentially with jitter from `reconnect_min_s` to
`reconnect_max_s`. A platform supplies how a connection opens (its handshake: the socket's URI)
and what a frame means; `SocketAdapter` wires a link and the inbound pipeline into an adapter.
"""

import asyncio
import contextlib
import functools
import random
import ssl
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from imgate_common.errors import PlatformError
from imgate_common.messages import Attachment, InboundMessage
from imgate_connector.health import ChannelHealth
from imgate_connector.media import MediaSource
from imgate_connector.pipeline import InboundPipeline
from imgate_connector.platforms.base import PlatformAdapter
from imgate_connector.settings import ConnectorSettings

log = structlog.get_logger()

# A connection that stayed up this long was healthy: its end does not count as a failure streak.
HEALTHY_AFTER_S = 30.0
# What a websocket close handshake may take when we stop: the design wants a channel down in 1 s.
CLOSE_TIMEOUT_S = 0.5

# The platform's handshake: the URI of the next websocket (raises `PlatformError` when refused).
OpenLink = Callable[[], Awaitable[str]]
# One frame from the socket; set the event to have the next connection opened (a handover).
OnFrame = Callable[[ClientConnection, str | bytes, asyncio.Event], Awaitable[None]]
# What a platform does on an open socket besides answering frames (its own pings), for as long
# as the socket is open.
KeepAlive = Callable[[ClientConnection], Coroutine[Any, Any, None]]
# The error a refused websocket handshake stands for, in the platform's words.
Refused = Callable[[InvalidStatus], Exception]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings of every platform websocket, made once. Left to websockets, each `wss://`
    connection creates a default context of its own, the system's CA bundle parsed into it:
    about 0.8 MB per connection, 80 MB for 100 channels."""
    return ssl.create_default_context()


def backoff_delay(failures: int, min_s: float, max_s: float) -> float:
    """Exponential with jitter: about min, 2·min, 4·min … up to max, each 50-100 %."""
    ceiling = min(max_s, min_s * 2 ** (failures - 1))
    return ceiling * random.uniform(0.5, 1.0)


class HalfDead(PlatformError):
    """The socket stayed open but nothing came through it: no frame, no pong."""

    def __str__(self) -> str:
        return f"websocket half-dead: {self.args[0]}"


@dataclass
class LinkState:
    """One websocket's liveness as the watchdog sees it."""

    last_rx: float = field(default_factory=time.monotonic)
    last_ping: float = 0.0
    dead: str | None = None  # why the watchdog cut it

    def heard(self) -> None:
        self.last_rx = time.monotonic()

    def pong(self, waiter: "asyncio.Future[float]") -> None:
        if not waiter.cancelled() and waiter.exception() is None:
            self.heard()


class ReconnectingLink:
    """Keeps one channel's websocket up."""

    def __init__(
        self,
        platform: str,
        channel_id: int,
        settings: ConnectorSettings,
        health: ChannelHealth,
        *,
        open_link: OpenLink,
        on_frame: OnFrame,
        max_frame_bytes: int,
        keep_alive: KeepAlive | None = None,
        refused: Refused | None = None,
    ) -> None:
        self._names = f"{platform}-{channel_id}", f"{platform}-ws-{channel_id}"  # of its tasks
        self._settings = settings
        self._health = health
        self._open = open_link
        self._on_frame = on_frame
        self._max_frame_bytes = max_frame_bytes
        self._keep_alive = keep_alive
        self._refused = refused
        self._log = log.bind(channel_id=channel_id, platform=platform)
        self._supervisor: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._sockets: set[ClientConnection] = set()
        self._draining: set[asyncio.Task[None]] = set()
        self._up = asyncio.Event()  # set while a websocket is open

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=self._names[0])

    async def stop(self, also: Collection[asyncio.Task[None]] = ()) -> None:
        """Close within a second, then cancel `also` (work on frames, read live) if unfinished.

        The sockets close by handshake while their readers go on: a frame the platform sent
        before it saw our close is still read and published, in its place on the bus. Its ACK
        can no longer go out, so the platform delivers it again to the channel's next owner and
        the bus drops the copy. Cancelling the readers instead would leave such a frame to the
        platform's redelivery alone, seconds later, behind the messages sent after it."""
        if self._supervisor is not None:
            self._supervisor.cancel()  # no next connection
        closing = [asyncio.create_task(ws.close()) for ws in list(self._sockets)]
        readers = [*self._connections, *self._draining]
        deadline = time.monotonic() + CLOSE_TIMEOUT_S * 1.5
        if readers:
            _, pending = await asyncio.wait(readers, timeout=CLOSE_TIMEOUT_S * 1.5)
            if pending:  # a close handshake that hangs (a half-dead peer): cut the sockets
                for ws in list(self._sockets):
                    ws.transport.abort()
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=0.2)
            for task in readers:  # how a socket ended is logged by its reader; nothing to raise
                if task.done() and not task.cancelled():
                    task.exception()
        work = [t for t in also if not t.done()]
        if work:  # frames read until the close: their publish gets what is left of the second
            _, late = await asyncio.wait(work, timeout=max(0.05, deadline - time.monotonic()))
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=0.2)
        for task in closing:
            task.cancel()
        if self._supervisor is not None:
            await asyncio.wait([self._supervisor], timeout=0.2)
        self._supervisor = None
        self._health.disconnected()

    async def wait_connected(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout_s)
        return self._up.is_set()

    async def _supervise(self) -> None:
        """Keep one live connection; on a handover open the next before the old one drains."""
        failures = 0
        while True:
            replace = asyncio.Event()
            opened = time.monotonic()
            connection = asyncio.create_task(self._connection(replace), name=self._names[1])
            self._connections.add(connection)
            connection.add_done_callback(self._connections.discard)
            replaced = asyncio.create_task(replace.wait())
            done, _ = await asyncio.wait({connection, replaced}, return_when=asyncio.FIRST_COMPLETED)
            if replaced in done:
                # Platform-initiated rebalancing: the next connection now, the old one drains.
                failures = 0
                self._health.reconnecting()
                drain = asyncio.create_task(self._drain(connection))
                self._draining.add(drain)
                drain.add_done_callback(self._draining.discard)
                continue
            replaced.cancel()
            error = connection.exception()
            if time.monotonic() - opened >= HEALTHY_AFTER_S:
                failures = 0
            failures += 1
            if error is not None:
                self._health.disconnected(f"{type(error).__name__}: {error}")
                self._log.warning("stream_connection_failed", error=str(error), failures=failures)
            else:
                self._health.disconnected()
            delay = backoff_delay(failures, self._settings.reconnect_min_s, self._settings.reconnect_max_s)
            self._log.info("stream_reconnecting", in_s=round(delay, 2), failures=failures)
            await asyncio.sleep(delay)
            self._health.reconnecting()

    async def _drain(self, connection: asyncio.Task[None]) -> None:
        """Let a replaced connection finish what it has; the platform closes it, or we do."""
        done, _ = await asyncio.wait({connection}, timeout=self._settings.drain_timeout_s)
        if not done:
            connection.cancel()

    async def _connection(self, replace: asyncio.Event) -> None:
        uri = await self._open()
        try:
            await self._connected(uri, replace)
        except InvalidStatus as exc:
            refusal = exc if self._refused is None else self._refused(exc)
            if refusal is exc:
                raise
            raise refusal from exc

    async def _connected(self, uri: str, replace: asyncio.Event) -> None:
        async with connect(
            uri,
            ping_interval=None,  # our watchdog pings, and decides what "dead" means
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=self._max_frame_bytes,
            open_timeout=self._settings.http_timeout_s,
            proxy=None,
            ssl=tls_context() if uri.lower().startswith("wss:") else None,
            # No permessage-deflate: its compressor and decompressor hold ~30 KB per socket
            # for frames of a few hundred bytes (and cost CPU on each one).
            compression=None,
        ) as ws:
            self._sockets.add(ws)
            link = LinkState()
            watchdog = asyncio.create_task(self._watchdog(ws, link))
            keep_alive = asyncio.create_task(self._keep_alive(ws)) if self._keep_alive else None
            self._health.connected()
            self._up.set()
            self._log.info("stream_connected", reconnects=self._health.reconnects)
            try:
                async for raw in ws:
                    link.heard()
                    await self._on_frame(ws, raw, replace)
            except websockets.ConnectionClosedError as exc:
                if link.dead:
                    raise HalfDead(link.dead) from exc
                raise
            finally:
                watchdog.cancel()
                if keep_alive is not None:
                    keep_alive.cancel()
                self._sockets.discard(ws)
                if not self._sockets:
                    self._up.clear()
                    self._health.disconnected()
                self._log.info("stream_closed", code=ws.close_code)

    async def _watchdog(self, ws: ClientConnection, link: LinkState) -> None:
        """Ping a quiet socket; cut one that answers neither frames nor pings (half-dead)."""
        ping_every = self._settings.ping_interval_s
        stale = self._settings.stale_after_s
        while True:
            await asyncio.sleep(min(1.0, ping_every / 2, stale / 4))
            now = time.monotonic()
            quiet = now - link.last_rx
            if quiet >= stale:
                self._log.warning("stream_half_dead", quiet_s=round(quiet, 1))
                link.dead = f"nothing heard for {quiet:.1f} s"
                ws.transport.abort()
                return
            if quiet >= ping_every and now - link.last_ping >= ping_every:
                link.last_ping = now
                try:
                    pong = await ws.ping()
                except websockets.ConnectionClosed:
                    return
                asyncio.ensure_future(pong).add_done_callback(link.pong)


class SocketAdapter(PlatformAdapter):
    """A platform adapter whose messages come over one websocket the core keeps up (`link`) and
    go through the core's inbound pipeline (`inbound`). A platform supplies the handshake, what
    a frame means, and where an attachment downloads from."""

    # The largest frame the platform sends; a bigger one closes the socket.
    max_frame_bytes: ClassVar[int] = 4 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbound = InboundPipeline(self, self.name, self._media_url)
        self.link = ReconnectingLink(
            self.name,
            self.spec.id,
            self.settings,
            self.health,
            open_link=self._open_link,
            on_frame=self._on_frame,
            max_frame_bytes=self.max_frame_bytes,
            keep_alive=self._keep_alive,
            refused=self._refused,
        )

    @abstractmethod
    async def _open_link(self) -> str:
        """The platform's handshake: the URI of the next websocket."""

    @abstractmethod
    async def _on_frame(self, ws: ClientConnection, raw: str | bytes, replace: asyncio.Event) -> None:
        """One frame; message frames go to `self.inbound.take`, and `replace.set()` asks for
        the next connection (the platform moves us)."""

    @abstractmethod
    async def _media_url(self, message: InboundMessage, attachment: Attachment) -> str | MediaSource:
        """Where an attachment of a message can be downloaded from now."""

    async def _keep_alive(self, ws: ClientConnection) -> None:
        """What the platform wants sent on an open socket besides answers (its own pings);
        cancelled when the socket closes. Nothing by default."""

    def _refused(self, exc: InvalidStatus) -> Exception:
        """The error a refused handshake stands for (what the platform's headers say)."""
        return exc

    async def start(self) -> None:
        await self.link.start()

    async def stop(self, drain_s: float = 0.0) -> None:
        await self.inbound.drain(drain_s)
        await self.link.stop(also=self.inbound.in_flight)

    async def wait_connected(self, timeout_s: float) -> bool:
        return await self.link.wait_connected(timeout_s)
