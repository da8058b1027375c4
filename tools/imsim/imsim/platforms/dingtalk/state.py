"""Everything imsim remembers of DingTalk, in memory, reachable from one `SimState`."""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from imsim import identifiers
from imsim.call_recorder import ApiCall
from imsim.faults import FaultRandom, QpsWindow
from imsim.identifiers import now_ms
from imsim.media import Media
from imsim.platform import tune_app
from imsim.platforms.dingtalk import identifiers as dingtalk_ids
from imsim.platforms.dingtalk.cards import Card
from imsim.platforms.dingtalk.counters import AppCounters
from imsim.platforms.dingtalk.faults import Fault, FaultConfig
from imsim.timeline import Conversation, MessageStatus
from imsim.tokens import TokenStore

BOT_MESSAGE_TOPIC = "/v1.0/im/bot/messages/get"
# DingTalk redelivers an un-ACKed bot message about a minute after pushing it.
DEFAULT_REDELIVER_AFTER = 60.0
DEFAULT_PING_INTERVAL = 30.0
# After a SYSTEM disconnect the server keeps the old socket about 10 s so the client can reconnect.
DEFAULT_DISCONNECT_GRACE = 10.0
DEFAULT_TOKEN_TTL = 7200
# sessionWebhook is valid about 1.5 h after the message that carried it.
DEFAULT_SESSION_TTL = 90 * 60.0
TICKET_TTL = 60.0
# The newest OpenAPI calls kept for `/api-calls`; counters keep counting past it.
API_CALL_RECORDS = 50_000


class FrameSink(Protocol):
    """The socket side of a stream connection, as the gateway provides it."""

    async def send_text(self, text: str) -> bool: ...

    async def close(self, code: int, reason: str) -> None: ...

    async def abort(self) -> None:
        """Drop the socket without a close frame."""

    def set_half_dead(self, half_dead: bool) -> None:
        """Stop (or resume) what the transport does by itself, such as answering pings."""


@dataclass
class StreamConnection:
    connection_id: str
    client_id: str
    subscriptions: list[dict[str, str]]
    ua: str
    local_ip: str
    sink: FrameSink
    last_ping_at: float  # monotonic; the connection's open time until the first ping
    opened_at: int = field(default_factory=now_ms)
    closed_at: int | None = None
    close_reason: str | None = None
    disconnect_sent_at: int | None = None
    close_due: float | None = None  # monotonic time the server closes it after a disconnect
    rebalance_due: float | None = None  # monotonic time of the next periodic disconnect
    half_dead: bool = False  # made half-dead on its own, for the rest of its life
    frames_sent: int = 0
    frames_lost: int = 0  # pushed into, or sent by the client over, a half-dead socket

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def accepts_pushes(self) -> bool:
        return self.is_open and self.disconnect_sent_at is None

    def subscribed(self, frame_type: str, topic: str) -> bool:
        return any(s.get("type") == frame_type and s.get("topic") in (topic, "*") for s in self.subscriptions)

    def to_json(self) -> dict[str, Any]:
        return {
            "connection_id": self.connection_id,
            "open": self.is_open,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_reason": self.close_reason,
            "disconnect_sent_at": self.disconnect_sent_at,
            "subscriptions": self.subscriptions,
            "ua": self.ua,
            "local_ip": self.local_ip,
            "half_dead": self.half_dead,
            "frames_sent": self.frames_sent,
            "frames_lost": self.frames_lost,
        }


@dataclass
class InboundMessage:
    """One bot message the user sent, kept until it is ACKed (and after, for the record)."""

    msg_id: str
    data: str
    conversation_id: str
    raw: bool = False  # `data` given verbatim by the test, possibly not a bot message at all
    topic: str = BOT_MESSAGE_TOPIC
    created_at: int = field(default_factory=now_ms)
    status: MessageStatus = "queued"
    last_sent_at: float | None = None  # monotonic
    first_pushed_at: int | None = None
    frame_ids: list[str] = field(default_factory=list)

    def summary_json(self) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "conversation_id": self.conversation_id,
            "status": self.status,
            "created_at": self.created_at,
            "first_pushed_at": self.first_pushed_at,
            "frames": len(self.frame_ids),
        }


@dataclass
class Delivery:
    frame_id: str
    msg_id: str
    connection_id: str
    redelivery: bool  # any push after the first, forced or not
    forced: bool = False  # a duplicate pushed on request (`/messages/{id}/redeliver`)
    swallowed: bool = False  # pushed into a half-dead socket: the client never saw it
    at: int = field(default_factory=now_ms)
    sent_mono: float = field(default_factory=time.monotonic)
    acked: bool = False
    ack_code: int | None = None
    ack_latency_ms: float | None = None  # push → first ACK of this frame

    def to_json(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "msg_id": self.msg_id,
            "connection_id": self.connection_id,
            "redelivery": self.redelivery,
            "forced": self.forced,
            "swallowed": self.swallowed,
            "at": self.at,
            "acked": self.acked,
            "ack_code": self.ack_code,
            "ack_latency_ms": self.ack_latency_ms,
        }


@dataclass
class PingRecord:
    frame_id: str
    opaque: str
    connection_id: str
    at: int = field(default_factory=now_ms)
    acked: bool = False
    echoed: bool = False
    ack_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "opaque": self.opaque,
            "connection_id": self.connection_id,
            "at": self.at,
            "acked": self.acked,
            "echoed": self.echoed,
            "ack_code": self.ack_code,
        }


@dataclass
class AckRecord:
    frame_id: str | None
    kind: str  # callback | ping | disconnect | unknown
    msg_id: str | None
    code: int | None
    message: str | None
    data: Any
    connection_id: str
    at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "kind": self.kind,
            "msg_id": self.msg_id,
            "code": self.code,
            "message": self.message,
            "data": self.data,
            "connection_id": self.connection_id,
            "at": self.at,
        }


@dataclass
class SimApp:
    client_id: str
    client_secret: str
    robot_code: str
    name: str
    redeliver_after: float = DEFAULT_REDELIVER_AFTER
    ping_interval: float = DEFAULT_PING_INTERVAL
    disconnect_grace: float = DEFAULT_DISCONNECT_GRACE
    token_ttl: int = DEFAULT_TOKEN_TTL
    session_ttl: float = DEFAULT_SESSION_TTL
    fault_config: FaultConfig = field(default_factory=FaultConfig)
    random: FaultRandom = field(default_factory=FaultRandom)
    card_window: QpsWindow = field(default_factory=QpsWindow)
    counters: AppCounters = field(default_factory=AppCounters)
    connections: dict[str, StreamConnection] = field(default_factory=dict)
    messages: dict[str, InboundMessage] = field(default_factory=dict)
    queued: deque[str] = field(default_factory=deque)  # msg ids waiting for a connection
    in_flight: set[str] = field(default_factory=set)  # msg ids pushed and not yet ACKed
    deliveries: list[Delivery] = field(default_factory=list)
    deliveries_by_frame: dict[str, Delivery] = field(default_factory=dict)
    pings: list[PingRecord] = field(default_factory=list)
    pings_by_frame: dict[str, PingRecord] = field(default_factory=dict)
    disconnect_frames: dict[str, str] = field(default_factory=dict)  # frame id → connection id
    acks: list[AckRecord] = field(default_factory=list)
    conversations: dict[str, Conversation] = field(default_factory=dict)
    cards: dict[str, Card] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    api_calls: deque[ApiCall] = field(default_factory=lambda: deque(maxlen=API_CALL_RECORDS))

    def __post_init__(self) -> None:
        self.app_id = dingtalk_ids.app_id(self.client_id)
        self.corp_id = dingtalk_ids.corp_id(self.client_id)
        self.chatbot_user_id = dingtalk_ids.opaque_user_id("bot", self.client_id)

    @property
    def card_qps_limit(self) -> int | None:
        """None: no limit (DingTalk answers 403 beyond roughly 20-50 QPS per app)."""
        return self.fault_config.card_qps_limit

    @card_qps_limit.setter
    def card_qps_limit(self, limit: int | None) -> None:
        self.fault_config = self.fault_config.merged({"card_qps_limit": limit})

    def record_call(self, call: ApiCall) -> None:
        self.api_calls.append(call)
        self.counters.calls.record(call)

    def is_half_dead(self, connection: StreamConnection) -> bool:
        return connection.half_dead or self.fault_config.half_dead

    def counters_json(self) -> dict[str, Any]:
        return self.counters.to_json(open_connections=len(self.open_connections()))

    def open_connections(self) -> list[StreamConnection]:
        return [c for c in self.connections.values() if c.is_open]

    def push_targets(self, topic: str) -> list[StreamConnection]:
        return [c for c in self.connections.values() if c.accepts_pushes and c.subscribed("CALLBACK", topic)]

    def single_conversation(self, staff_id: str, title: str | None = None) -> Conversation:
        conversation_id = dingtalk_ids.conversation_id_for_single(self.client_id, staff_id)
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            conversation = Conversation(conversation_id, "1", title or staff_id, staff_id)
            self.conversations[conversation_id] = conversation
        return conversation

    def group_conversation(self, conversation_id: str | None, title: str | None) -> Conversation:
        if conversation_id is None:
            if not title:
                raise ValueError("a group needs conversation_id or conversation_title")
            conversation_id = dingtalk_ids.conversation_id_for_group(self.client_id, title)
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            conversation = Conversation(conversation_id, "2", title or conversation_id)
            self.conversations[conversation_id] = conversation
        elif title and conversation.title != title:
            conversation.title = title
        return conversation

    def reset_records(self) -> None:
        """Forget messages, conversations, cards and every record and counter; the app, its
        settings and its open connections stay. Frames already out are no longer tracked."""
        self.messages.clear()
        self.queued.clear()
        self.in_flight.clear()
        self.deliveries.clear()
        self.deliveries_by_frame.clear()
        self.pings.clear()
        self.pings_by_frame.clear()
        self.acks.clear()
        self.conversations.clear()
        self.cards.clear()
        self.api_calls.clear()
        self.counters = AppCounters()

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "robot_code": self.robot_code,
            "name": self.name,
            "app_id": self.app_id,
            "corp_id": self.corp_id,
            "chatbot_user_id": self.chatbot_user_id,
            "redeliver_after": self.redeliver_after,
            "ping_interval": self.ping_interval,
            "disconnect_grace": self.disconnect_grace,
            "token_ttl": self.token_ttl,
            "session_ttl": self.session_ttl,
            "card_qps_limit": self.card_qps_limit,
            "fault_config": self.fault_config.model_dump(),
            "connections": len(self.open_connections()),
            "queued": len(self.queued),
            "in_flight": len(self.in_flight),
        }


@dataclass
class Ticket:
    client_id: str
    subscriptions: list[dict[str, str]]
    ua: str
    local_ip: str
    expires_at: float  # monotonic


@dataclass
class Session:
    """A sessionWebhook: it belongs to one message, which is how replies through it find that
    message exactly."""

    token: str
    client_id: str
    conversation_id: str
    msg_id: str
    expires_at_ms: int


@dataclass
class SimState:
    apps: dict[str, SimApp] = field(default_factory=dict)
    tickets: dict[str, Ticket] = field(default_factory=dict)
    tokens: TokenStore = field(default_factory=TokenStore)
    sessions: dict[str, Session] = field(default_factory=dict)
    media: dict[str, Media] = field(default_factory=dict)

    def upsert_app(
        self,
        client_id: str,
        client_secret: str,
        *,
        robot_code: str | None = None,
        name: str | None = None,
        **tunables: Any,
    ) -> SimApp:
        app = self.apps.get(client_id)
        if app is None:
            app = SimApp(
                client_id=client_id,
                client_secret=client_secret,
                robot_code=robot_code or client_id,
                name=name or client_id,
            )
            self.apps[client_id] = app
        else:
            app.client_secret = client_secret
            if robot_code:
                app.robot_code = robot_code
            if name:
                app.name = name
        tune_app(app, **tunables)
        return app

    def app_by_credentials(self, client_id: str, client_secret: str) -> SimApp | None:
        app = self.apps.get(client_id)
        if app is None or app.client_secret != client_secret:
            return None
        return app

    def issue_ticket(self, app: SimApp, subscriptions: list[dict[str, str]], ua: str, local_ip: str) -> str:
        self._drop_expired_tickets()
        ticket = identifiers.new_uuid()
        self.tickets[ticket] = Ticket(
            app.client_id, subscriptions, ua, local_ip, time.monotonic() + TICKET_TTL
        )
        return ticket

    def redeem_ticket(self, ticket: str) -> Ticket | None:
        """A ticket opens one websocket, once, within a minute of being issued."""
        grant = self.tickets.pop(ticket, None)
        if grant is None or grant.expires_at < time.monotonic():
            return None
        return grant

    def _drop_expired_tickets(self) -> None:
        now = time.monotonic()
        for ticket in [t for t, g in self.tickets.items() if g.expires_at < now]:
            del self.tickets[ticket]

    def issue_token(self, app: SimApp) -> str:
        token = identifiers.new_token()
        self.tokens.issue(token, app.client_id, app.token_ttl)
        app.counters.tokens_issued += 1
        return token

    def app_by_token(self, token: str) -> SimApp | None:
        return self.apps.get(self.tokens.valid_owner(token) or "")

    def token_owner(self, token: str) -> SimApp | None:
        """The app a token was issued to, expired or not (to count its 401s)."""
        return self.apps.get(self.tokens.owner(token) or "")

    def expire_tokens(self, app: SimApp) -> int:
        return self.tokens.expire(app.client_id)

    def open_session(self, app: SimApp, conversation: Conversation, msg_id: str) -> Session:
        token = identifiers.new_token()
        session = Session(
            token,
            app.client_id,
            conversation.conversation_id,
            msg_id,
            now_ms() + int(app.session_ttl * 1000),
        )
        self.sessions[token] = session
        return session

    def reset_app(self, app: SimApp, *, faults: bool = False) -> None:
        """`SimApp.reset_records`, plus its sessionWebhooks (their conversations are gone);
        `faults` also restores the default fault configuration and clears one-shot faults."""
        app.reset_records()
        for token in [t for t, s in self.sessions.items() if s.client_id == app.client_id]:
            del self.sessions[token]
        if faults:
            app.fault_config = FaultConfig()
            app.random.reseed(None)
            app.faults.clear()

    def expire_sessions(self, app: SimApp) -> int:
        now = now_ms()
        expired = 0
        for session in self.sessions.values():
            if session.client_id == app.client_id and session.expires_at_ms > now:
                session.expires_at_ms = now
                expired += 1
        return expired
