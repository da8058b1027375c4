"""Everything imsim remembers, in memory, reachable from one `SimState`."""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from imsim import identifiers
from imsim.cards import Card
from imsim.identifiers import now_ms

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

MessageStatus = Literal["queued", "sent", "acked"]


class FrameSink(Protocol):
    """The socket side of a stream connection, as the gateway provides it."""

    async def send_text(self, text: str) -> bool: ...

    async def close(self, code: int, reason: str) -> None: ...


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
    frames_sent: int = 0

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
            "frames_sent": self.frames_sent,
        }


@dataclass
class InboundMessage:
    """One bot message the user sent, kept until it is ACKed (and after, for the record)."""

    msg_id: str
    data: str
    conversation_id: str
    topic: str = BOT_MESSAGE_TOPIC
    created_at: int = field(default_factory=now_ms)
    status: MessageStatus = "queued"
    last_sent_at: float | None = None  # monotonic
    frame_ids: list[str] = field(default_factory=list)


@dataclass
class Delivery:
    frame_id: str
    msg_id: str
    connection_id: str
    redelivery: bool
    at: int = field(default_factory=now_ms)
    acked: bool = False
    ack_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "msg_id": self.msg_id,
            "connection_id": self.connection_id,
            "redelivery": self.redelivery,
            "at": self.at,
            "acked": self.acked,
            "ack_code": self.ack_code,
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
class UserItem:
    message: InboundMessage
    msgtype: str
    text: str
    content: dict[str, Any] | None
    sender_staff_id: str
    sender_nick: str
    at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "user",
            "msg_id": self.message.msg_id,
            "text": self.text,
            "msgtype": self.msgtype,
            "content": self.content,
            "sender_staff_id": self.sender_staff_id,
            "sender_nick": self.sender_nick,
            "status": self.message.status,
            "at": self.at,
        }


@dataclass
class ReplyItem:
    kind: str  # text | markdown
    text: str
    via: str  # webhook | batchSend | groupSend
    title: str | None = None
    at_user_ids: list[str] = field(default_factory=list)
    at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"kind": self.kind, "text": self.text, "via": self.via}
        if self.title is not None:
            item["title"] = self.title
        item["at_user_ids"] = self.at_user_ids
        item["at"] = self.at
        return item


@dataclass
class CardItem:
    card: Card
    at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "card", **self.card.to_json(), "at": self.at}


TimelineItem = UserItem | ReplyItem | CardItem


@dataclass
class Conversation:
    conversation_id: str
    type: Literal["1", "2"]
    title: str
    staff_id: str | None = None  # the user of a 1:1 chat
    items: list[TimelineItem] = field(default_factory=list)
    created_at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "type": self.type,
            "title": self.title,
            "staff_id": self.staff_id,
            "created_at": self.created_at,
            "items": [item.to_json() for item in self.items],
        }

    def summary_json(self) -> dict[str, Any]:
        """The conversation without its items: what a list of chats shows."""
        last = self.items[-1].to_json() if self.items else None
        last_text = None
        if last is not None:
            last_text = last.get("content") if last["kind"] == "card" else last.get("text")
        return {
            "conversation_id": self.conversation_id,
            "type": self.type,
            "title": self.title,
            "staff_id": self.staff_id,
            "created_at": self.created_at,
            "item_count": len(self.items),
            "last_text": last_text,
            "last_at": last["at"] if last else None,
        }


@dataclass
class Fault:
    """An injected OpenAPI failure: the next `times` matching calls get this answer."""

    fault_id: str
    path: str
    method: str | None
    status: int
    code: str
    message: str
    times: int | None  # None: until cleared
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        live = self.times is None or self.hits < self.times
        return live and path == self.path and (self.method is None or self.method == method)

    def to_json(self) -> dict[str, Any]:
        return {
            "fault_id": self.fault_id,
            "path": self.path,
            "method": self.method,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "times": self.times,
            "hits": self.hits,
        }


@dataclass
class ApiCall:
    method: str
    path: str
    outcome: str  # ok | fault | qps_limited
    at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "outcome": self.outcome, "at": self.at}


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
    card_qps_limit: int | None = None  # None: no limit (DingTalk answers 403 beyond ~20-50)
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
    api_calls: list[ApiCall] = field(default_factory=list)
    card_call_times: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.app_id = identifiers.app_id(self.client_id)
        self.corp_id = identifiers.corp_id(self.client_id)
        self.chatbot_user_id = identifiers.opaque_user_id("bot", self.client_id)

    def open_connections(self) -> list[StreamConnection]:
        return [c for c in self.connections.values() if c.is_open]

    def push_targets(self, topic: str) -> list[StreamConnection]:
        return [c for c in self.connections.values() if c.accepts_pushes and c.subscribed("CALLBACK", topic)]

    def single_conversation(self, staff_id: str, title: str | None = None) -> Conversation:
        conversation_id = identifiers.conversation_id_for_single(self.client_id, staff_id)
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            conversation = Conversation(conversation_id, "1", title or staff_id, staff_id)
            self.conversations[conversation_id] = conversation
        return conversation

    def group_conversation(self, conversation_id: str | None, title: str | None) -> Conversation:
        if conversation_id is None:
            if not title:
                raise ValueError("a group needs conversation_id or conversation_title")
            conversation_id = identifiers.conversation_id_for_group(self.client_id, title)
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            conversation = Conversation(conversation_id, "2", title or conversation_id)
            self.conversations[conversation_id] = conversation
        elif title and conversation.title != title:
            conversation.title = title
        return conversation

    def take_card_call_slot(self) -> bool:
        """Sliding one-second window for the card QPS limit; False when over the limit."""
        if self.card_qps_limit is None:
            return True
        now = time.monotonic()
        while self.card_call_times and now - self.card_call_times[0] >= 1.0:
            self.card_call_times.popleft()
        if len(self.card_call_times) >= self.card_qps_limit:
            return False
        self.card_call_times.append(now)
        return True

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
class AccessToken:
    client_id: str
    expires_at: float  # monotonic


@dataclass
class Session:
    token: str
    client_id: str
    conversation_id: str
    expires_at_ms: int


@dataclass
class Media:
    content: bytes
    content_type: str
    file_name: str | None = None


@dataclass
class SimState:
    apps: dict[str, SimApp] = field(default_factory=dict)
    tickets: dict[str, Ticket] = field(default_factory=dict)
    tokens: dict[str, AccessToken] = field(default_factory=dict)
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
        self.tune_app(app, **tunables)
        return app

    @staticmethod
    def tune_app(app: SimApp, **tunables: Any) -> None:
        for key, value in tunables.items():
            if value is None:
                continue
            if not hasattr(app, key):
                raise AttributeError(key)
            setattr(app, key, value)

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
        self.tokens[token] = AccessToken(app.client_id, time.monotonic() + app.token_ttl)
        return token

    def app_by_token(self, token: str) -> SimApp | None:
        grant = self.tokens.get(token)
        if grant is None or grant.expires_at <= time.monotonic():
            return None
        return self.apps.get(grant.client_id)

    def expire_tokens(self, app: SimApp) -> int:
        now = time.monotonic()
        expired = 0
        for grant in self.tokens.values():
            if grant.client_id == app.client_id and grant.expires_at > now:
                grant.expires_at = now
                expired += 1
        return expired

    def open_session(self, app: SimApp, conversation: Conversation) -> Session:
        token = identifiers.new_token()
        session = Session(
            token,
            app.client_id,
            conversation.conversation_id,
            now_ms() + int(app.session_ttl * 1000),
        )
        self.sessions[token] = session
        return session

    def expire_sessions(self, app: SimApp) -> int:
        now = now_ms()
        expired = 0
        for session in self.sessions.values():
            if session.client_id == app.client_id and session.expires_at_ms > now:
                session.expires_at_ms = now
                expired += 1
        return expired
