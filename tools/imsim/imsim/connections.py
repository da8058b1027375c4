"""What every platform's dispatcher does with its server's connections: open and close them,
drop them hard, make them half-dead, and time the periodic disconnects."""

import time
from abc import abstractmethod
from collections.abc import MutableMapping
from typing import Any, Generic, Protocol, TypeVar

import structlog

from imsim.identifiers import now_ms
from imsim.timers import TimerLoop

log = structlog.get_logger(__name__)


class Socket(Protocol):
    async def abort(self) -> None: ...

    def set_half_dead(self, half_dead: bool) -> None: ...


class ServerConnection(Protocol):
    connection_id: str
    closed_at: int | None
    close_reason: str | None
    half_dead: bool  # made half-dead on its own, for the rest of its life
    rebalance_due: float | None  # monotonic time of the next periodic disconnect

    @property
    def sink(self) -> Socket: ...

    @property
    def is_open(self) -> bool: ...


class ConnectionCounters(Protocol):
    connections_opened: int
    connections_closed: int
    connections_dropped: int


class ConnectionFaults(Protocol):
    @property
    def disconnect_every(self) -> float | None: ...


Conn = TypeVar("Conn", bound=ServerConnection)


class ConnectedApp(Protocol[Conn]):
    @property
    def connections(self) -> MutableMapping[str, Conn]: ...

    @property
    def counters(self) -> ConnectionCounters: ...

    @property
    def fault_config(self) -> ConnectionFaults: ...

    def is_half_dead(self, connection: Conn) -> bool: ...

    def open_connections(self) -> list[Conn]: ...


App = TypeVar("App", bound=ConnectedApp[Any])


class ConnectionKeeper(TimerLoop, Generic[App, Conn]):
    """The connection half of a dispatcher; its timer loop is the platform's."""

    @staticmethod
    @abstractmethod
    def app_key(app: App) -> str:
        """The app's id in logs."""

    def register(self, app: App, connection: Conn) -> None:
        """A connection opened: count it, time its periodic disconnect, make it half-dead if
        the app's sockets are."""
        app.connections[connection.connection_id] = connection
        app.counters.connections_opened += 1
        every = app.fault_config.disconnect_every
        connection.rebalance_due = time.monotonic() + every if every else None
        connection.sink.set_half_dead(app.is_half_dead(connection))
        log.info(
            "connection_opened",
            app=self.app_key(app),
            connection_id=connection.connection_id,
            open=len(app.open_connections()),
        )

    def detach(self, app: App, connection: Conn, reason: str) -> None:
        if not connection.is_open:
            return
        connection.closed_at = now_ms()
        connection.close_reason = reason
        app.counters.connections_closed += 1
        if reason == "dropped":
            app.counters.connections_dropped += 1
        log.info(
            "connection_closed", app=self.app_key(app), connection_id=connection.connection_id, reason=reason
        )

    async def drop(self, app: App, connection: Conn) -> bool:
        """Hard drop: the socket goes away without a close frame, as when a network path dies."""
        if not connection.is_open:
            return False
        self.detach(app, connection, "dropped")
        await connection.sink.abort()
        return True

    def retime_disconnects(self, app: App, previous_every: float | None) -> None:
        """Bring open connections in line with a changed fault configuration."""
        every = app.fault_config.disconnect_every
        if every != previous_every:
            # A new period counts from now, not from when each connection opened.
            due = time.monotonic() + every if every else None
            for connection in app.open_connections():
                connection.rebalance_due = due
        self.refresh_half_dead(app)

    def refresh_half_dead(self, app: App) -> None:
        for connection in app.open_connections():
            connection.sink.set_half_dead(app.is_half_dead(connection))

    def make_half_dead(self, app: App, connection: Conn) -> None:
        """This connection alone turns half-dead until it closes; new connections are healthy."""
        connection.half_dead = True
        connection.sink.set_half_dead(True)
        log.info("connection_half_dead", app=self.app_key(app), connection_id=connection.connection_id)
