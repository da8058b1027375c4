"""Everything imsim remembers of Feishu, in memory, reachable from one `FeishuState`."""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from imsim.call_recorder import ApiCall
from imsim.faults import FaultRandom
from imsim.identifiers import now_ms
from imsim.media import Media
from imsim.platform import tune_app
from imsim.platforms.feishu import identifiers as feishu_ids
from imsim.platforms.feishu.cards import DEFAULT_STREAMING_TIMEOUT, CardEntity
from imsim.platforms.feishu.counters import AppCounters
from imsim.platforms.feishu.faults import FaultConfig, RateWindows
from imsim.timeline import Conversation, MessageStatus
from imsim.tokens import TokenStore

# Feishu waits 3 s for an event's ACK; without one it pushes the event again, reportedly 15 s,
# 5 min, 1 h and 6 h later, with the same event_id.
DEFAULT_ACK_WAIT = 3.0
DEFAULT_REDELIVER_SCHEDULE = (15.0, 300.0, 3600.0, 21600.0)
# ClientConfig the endpoint hands out (seconds), at the SDK's own defaults.
DEFAULT_PING_INTERVAL = 120
DEFAULT_RECONNECT_COUNT = -1
DEFAULT_RECONNECT_INTERVAL = 120
DEFAULT_RECONNECT_NONCE = 30
DEFAULT_MAX_CONNECTIONS = 50
DEFAULT_TOKEN_TTL = 7200
# Payloads above this many bytes go out in several data frames (`sum` > 1).
DEFAULT_CHUNK_SIZE = 64 * 1024
# The endpoint's URL is good for one connection within this long.
TICKET_TTL = 60.0
# Feishu hands out a new tenant token once the old one has less than this left.
TOKEN_RENEW_BELOW = 1800.0
API_CALL_RECORDS = 50_000


class FrameSink(Protocol):
    """The socket side of a long connection, as the gateway provides it."""

    async def send_bytes(self, data: bytes) -> bool: ...

    async def close(self, code: int, reason: str) -> None: ...

    async def abort(self) -> None: ...

    def set_half_dead(self, half_dead: bool) -> None: ...


@dataclass
class Connection:
    connection_id: str  # the device_id of the URL that opened it
    service_id: int
    app_id: str
    sink: FrameSink
    opened_at: int = field(default_factory=now_ms)
    opened_mono: float = field(default_factory=time.monotonic)
    rebalance_due: float | None = None  # monotonic time of the next periodic disconnect
    closed_at: int | None = None
    close_reason: str | None = None
    half_dead: bool = False
    frames_sent: int = 0
    frames_lost: int = 0
    pings: int = 0

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "connection_id": self.connection_id,
            "service_id": self.service_id,
            "open": self.is_open,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_reason": self.close_reason,
            "half_dead": self.half_dead,
            "frames_sent": self.frames_sent,
            "frames_lost": self.frames_lost,
            "pings": self.pings,
        }


@dataclass
class InboundEvent:
    """One event for the bot (a user's message), kept until ACKed and after, for the record.
    `msg_id` is the IM message id (the event id for a verbatim payload), which replies name."""

    event_id: str
    msg_id: str
    chat_id: str
    payload: bytes
    raw: bool = False
    created_at: int = field(default_factory=now_ms)
    status: MessageStatus = "queued"
    first_pushed_at: int | None = None
    last_sent_at: float | None = None  # monotonic, of the latest push that was not forced
    attempts: int = 0  # pushes that were not forced or injected duplicates
    abandoned: bool = False
    frame_ids: list[str] = field(default_factory=list)

    def summary_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "message_id": self.msg_id,
            "chat_id": self.chat_id,
            "status": self.status,
            "created_at": self.created_at,
            "first_pushed_at": self.first_pushed_at,
            "pushes": len(self.frame_ids),
            "abandoned": self.abandoned,
        }


@dataclass
class Delivery:
    frame_id: str  # the data frames' `message_id` header
    event_id: str
    connection_id: str
    redelivery: bool
    kind: str = "push"  # push | redelivery | forced | duplicate
    frames: int = 1
    swallowed: bool = False
    at: int = field(default_factory=now_ms)
    sent_mono: float = field(default_factory=time.monotonic)
    acked: bool = False
    late: bool = False
    ack_code: int | None = None
    ack_latency_ms: float | None = None
    biz_rt: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "event_id": self.event_id,
            "connection_id": self.connection_id,
            "redelivery": self.redelivery,
            "kind": self.kind,
            "frames": self.frames,
            "swallowed": self.swallowed,
            "at": self.at,
            "acked": self.acked,
            "late": self.late,
            "ack_code": self.ack_code,
            "ack_latency_ms": self.ack_latency_ms,
            "biz_rt": self.biz_rt,
        }


@dataclass
class AckRecord:
    frame_id: str | None
    event_id: str | None
    code: int | None
    late: bool
    biz_rt: str | None
    connection_id: str
    at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "event_id": self.event_id,
            "code": self.code,
            "late": self.late,
            "biz_rt": self.biz_rt,
            "connection_id": self.connection_id,
            "at": self.at,
        }


@dataclass
class BotMessage:
    """A message the bot sent (a reply or a send), as the IM API returns it."""

    message_id: str
    chat_id: str
    msg_type: str
    content: str
    reply_to: str | None  # the user message it answers, when known
    parent_id: str | None = None
    root_id: str | None = None
    created_at: int = field(default_factory=now_ms)

    def to_api(self, app: "FeishuApp") -> dict[str, Any]:
        item: dict[str, Any] = {
            "message_id": self.message_id,
            "msg_type": self.msg_type,
            "create_time": str(self.created_at),
            "update_time": str(self.created_at),
            "deleted": False,
            "updated": False,
            "chat_id": self.chat_id,
            "sender": {
                "id": app.app_id,
                "id_type": "app_id",
                "sender_type": "app",
                "tenant_key": app.tenant_key,
            },
            "body": {"content": self.content},
        }
        if self.parent_id:
            item["parent_id"] = self.parent_id
            item["root_id"] = self.root_id or self.parent_id
        return item


@dataclass
class MediaItem:
    message_id: str
    kind: str  # image | file (the `type` the resource API wants)
    media: Media


@dataclass
class User:
    user_id: str
    name: str
    open_id: str
    union_id: str


@dataclass
class FeishuApp:
    app_id: str
    app_secret: str
    name: str
    ack_wait: float = DEFAULT_ACK_WAIT
    redeliver_schedule: list[float] = field(default_factory=lambda: list(DEFAULT_REDELIVER_SCHEDULE))
    ping_interval: int = DEFAULT_PING_INTERVAL
    reconnect_count: int = DEFAULT_RECONNECT_COUNT
    reconnect_interval: int = DEFAULT_RECONNECT_INTERVAL
    reconnect_nonce: int = DEFAULT_RECONNECT_NONCE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    chunk_size: int = DEFAULT_CHUNK_SIZE
    token_ttl: int = DEFAULT_TOKEN_TTL
    streaming_timeout: float = DEFAULT_STREAMING_TIMEOUT
    verification_token: str = ""
    fault_config: FaultConfig = field(default_factory=FaultConfig)
    random: FaultRandom = field(default_factory=FaultRandom)
    windows: RateWindows = field(default_factory=RateWindows)
    counters: AppCounters = field(default_factory=AppCounters)
    connections: dict[str, Connection] = field(default_factory=dict)
    events: dict[str, InboundEvent] = field(default_factory=dict)
    events_by_message: dict[str, str] = field(default_factory=dict)  # message id → event id
    queued: deque[str] = field(default_factory=deque)  # event ids waiting for a connection
    in_flight: set[str] = field(default_factory=set)  # event ids pushed, not ACKed, not abandoned
    deliveries: list[Delivery] = field(default_factory=list)
    deliveries_by_frame: dict[str, Delivery] = field(default_factory=dict)
    acks: list[AckRecord] = field(default_factory=list)
    users: dict[str, User] = field(default_factory=dict)  # by user_id
    conversations: dict[str, Conversation] = field(default_factory=dict)
    cards: dict[str, CardEntity] = field(default_factory=dict)
    bot_messages: dict[str, BotMessage] = field(default_factory=dict)
    message_uuids: dict[str, str] = field(default_factory=dict)  # send/reply uuid → message id
    media: dict[str, MediaItem] = field(default_factory=dict)  # by file key
    api_calls: deque[ApiCall] = field(default_factory=lambda: deque(maxlen=API_CALL_RECORDS))

    def __post_init__(self) -> None:
        self.tenant_key = feishu_ids.tenant_key(self.app_id)
        self.bot_open_id = feishu_ids.bot_open_id(self.app_id)
        if not self.verification_token:
            self.verification_token = feishu_ids.event_id()

    def client_config(self) -> dict[str, int]:
        return {
            "ReconnectCount": self.reconnect_count,
            "ReconnectInterval": self.reconnect_interval,
            "ReconnectNonce": self.reconnect_nonce,
            "PingInterval": self.ping_interval,
        }

    def record_call(self, call: ApiCall) -> None:
        self.api_calls.append(call)
        self.counters.calls.record(call)

    def is_half_dead(self, connection: Connection) -> bool:
        return connection.half_dead or self.fault_config.half_dead

    def open_connections(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.is_open]

    def counters_json(self) -> dict[str, Any]:
        return self.counters.to_json(open_connections=len(self.open_connections()))

    def user(self, user_id: str, name: str) -> User:
        user = self.users.get(user_id)
        if user is None:
            user = User(user_id, name, feishu_ids.open_id(self.app_id, user_id), feishu_ids.union_id(user_id))
            self.users[user_id] = user
        else:
            user.name = name
        return user

    def user_by(self, id_type: str, value: str) -> User | None:
        for user in self.users.values():
            if getattr(user, id_type, None) == value:
                return user
        return None

    def p2p_chat(self, user: User) -> Conversation:
        chat_id = feishu_ids.p2p_chat_id(self.app_id, user.user_id)
        chat = self.conversations.get(chat_id)
        if chat is None:
            chat = Conversation(chat_id, "1", user.name, user.user_id)
            self.conversations[chat_id] = chat
        return chat

    def group_chat(self, title: str) -> Conversation:
        chat_id = feishu_ids.group_chat_id(self.app_id, title)
        chat = self.conversations.get(chat_id)
        if chat is None:
            chat = Conversation(chat_id, "2", title)
            self.conversations[chat_id] = chat
        return chat

    def reset_records(self) -> None:
        """Forget events, chats, cards, messages and every record and counter; the app, its
        settings, tokens and open connections stay."""
        self.events.clear()
        self.events_by_message.clear()
        self.queued.clear()
        self.in_flight.clear()
        self.deliveries.clear()
        self.deliveries_by_frame.clear()
        self.acks.clear()
        self.conversations.clear()
        self.cards.clear()
        self.bot_messages.clear()
        self.message_uuids.clear()
        self.media.clear()
        self.api_calls.clear()
        self.windows = RateWindows()
        self.counters = AppCounters()

    def to_json(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "name": self.name,
            "tenant_key": self.tenant_key,
            "bot_open_id": self.bot_open_id,
            "verification_token": self.verification_token,
            "ack_wait": self.ack_wait,
            "redeliver_schedule": self.redeliver_schedule,
            "client_config": self.client_config(),
            "max_connections": self.max_connections,
            "chunk_size": self.chunk_size,
            "token_ttl": self.token_ttl,
            "streaming_timeout": self.streaming_timeout,
            "fault_config": self.fault_config.model_dump(),
            "connections": len(self.open_connections()),
            "queued": len(self.queued),
            "in_flight": len(self.in_flight),
        }


@dataclass
class Ticket:
    app_id: str
    device_id: str
    service_id: int
    expires_at: float  # monotonic


@dataclass
class FeishuState:
    apps: dict[str, FeishuApp] = field(default_factory=dict)
    tickets: dict[str, Ticket] = field(default_factory=dict)  # by device id
    tokens: TokenStore = field(default_factory=TokenStore)

    def upsert_app(
        self, app_id: str, app_secret: str, *, name: str | None = None, **tunables: Any
    ) -> FeishuApp:
        app = self.apps.get(app_id)
        if app is None:
            app = FeishuApp(app_id=app_id, app_secret=app_secret, name=name or app_id)
            self.apps[app_id] = app
        else:
            app.app_secret = app_secret
            if name:
                app.name = name
        tune_app(app, **tunables)
        return app

    def issue_ticket(self, app: FeishuApp) -> Ticket:
        now = time.monotonic()
        for device_id in [d for d, t in self.tickets.items() if t.expires_at < now]:
            del self.tickets[device_id]
        ticket = Ticket(app.app_id, feishu_ids.device_id(), int(now * 1000) % 1_000_000 + 1, now + TICKET_TTL)
        self.tickets[ticket.device_id] = ticket
        return ticket

    def redeem_ticket(self, device_id: str, service_id: str) -> Ticket | None:
        """An endpoint URL opens one connection, once, within a minute of being handed out."""
        ticket = self.tickets.get(device_id)
        if ticket is None or str(ticket.service_id) != service_id or ticket.expires_at < time.monotonic():
            return None
        del self.tickets[device_id]
        return ticket

    def issue_token(self, app: FeishuApp) -> tuple[str, int]:
        """The app's current token while it has long enough to live, else a new one; and its
        remaining seconds."""
        current = self.tokens.longest_lived(app.app_id)
        if current is not None and current[1] >= TOKEN_RENEW_BELOW:
            return current[0], int(current[1])
        token = feishu_ids.tenant_access_token()
        self.tokens.issue(token, app.app_id, app.token_ttl)
        app.counters.tokens_issued += 1
        return token, app.token_ttl

    def app_by_token(self, token: str) -> FeishuApp | None:
        return self.apps.get(self.tokens.valid_owner(token) or "")

    def token_owner(self, token: str) -> FeishuApp | None:
        return self.apps.get(self.tokens.owner(token) or "")

    def expire_tokens(self, app: FeishuApp) -> int:
        return self.tokens.expire(app.app_id)
