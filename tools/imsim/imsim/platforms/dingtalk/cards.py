"""AI card instances as DingTalk's card OpenAPI keeps them."""

from dataclasses import dataclass, field
from typing import Any

from imsim.identifiers import now_ms
from imsim.platforms.dingtalk.errors import OpenApiError

# The SDK's AI markdown template writes the answer under this key; the page shows it.
CONTENT_KEY = "msgContent"
FLOW_STATUS_KEY = "flowStatus"
# AI card states that end the card: finished, failed. A card set to one (created so, or updated
# through the card instance API) is finished whether or not a stream was finalized: the SDK's own
# AI-card finish is that one update, with the final text beside the state.
FINISHED, FAILED = "3", "5"
OPEN_SPACE_PREFIX = "dtv1.card//"
SPACE_TYPES = ("IM_ROBOT", "IM_GROUP")


def parse_open_space_id(open_space_id: str) -> list[tuple[str, str]]:
    """`dtv1.card//IM_ROBOT.<staffId>;dtv1.card//IM_GROUP.<cid>` → [(space type, space id)]."""
    spaces = []
    for part in open_space_id.split(";"):
        part = part.strip()
        if not part:
            continue
        if not part.startswith(OPEN_SPACE_PREFIX):
            raise OpenApiError(400, "param.openSpaceId.invalid", f"bad openSpaceId {part!r}")
        space_type, dot, space_id = part.removeprefix(OPEN_SPACE_PREFIX).partition(".")
        if space_type not in SPACE_TYPES or not dot or not space_id:
            raise OpenApiError(400, "param.openSpaceId.invalid", f"bad openSpaceId {part!r}")
        spaces.append((space_type, space_id))
    if not spaces:
        raise OpenApiError(400, "param.openSpaceId.missing", "openSpaceId is required")
    return spaces


def normalize_params(card_param_map: dict[str, Any]) -> dict[str, str]:
    """cardParamMap is Map<String, String>: scalars are coerced the way DingTalk's JSON binding
    does it, objects and arrays are refused (they must be sent as JSON strings)."""
    params = {}
    for key, value in card_param_map.items():
        if isinstance(value, bool):
            params[key] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            params[key] = str(value)
        elif value is None:
            params[key] = ""
        else:
            raise OpenApiError(
                400,
                "param.cardParamMap.invalid",
                f"cardParamMap value of {key!r} must be a string, got {type(value).__name__}",
            )
    return params


@dataclass
class CardUpdate:
    at: int
    op: str  # create | deliver | append | full | update
    key: str | None
    len: int  # length of the key's value (msgContent for create/deliver/update) after the op
    finalize: bool = False
    error: bool = False
    flow_status: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "op": self.op,
            "key": self.key,
            "len": self.len,
            "finalize": self.finalize,
            "error": self.error,
            "flow_status": self.flow_status,
        }


@dataclass
class CardDelivery:
    space_type: str
    space_id: str
    conversation_id: str
    at: int


@dataclass
class Card:
    out_track_id: str
    template_id: str
    params: dict[str, str]
    callback_type: str | None = None
    created_at: int = field(default_factory=now_ms)
    deliveries: list[CardDelivery] = field(default_factory=list)
    # Streaming state per key: "streaming", "finalized" or "failed".
    streams: dict[str, str] = field(default_factory=dict)
    # Finished: a stream finalized, or the flow status set to finished or failed.
    finalized: bool = False
    error: bool = False
    updates: list[CardUpdate] = field(default_factory=list)
    seen_guids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        ends = self._apply_flow_status()
        self._record("create", None, finalize=ends, error=self.error)

    @property
    def content(self) -> str:
        return self.params.get(CONTENT_KEY, "")

    @property
    def flow_status(self) -> str | None:
        return self.params.get(FLOW_STATUS_KEY)

    @property
    def delivered(self) -> bool:
        return bool(self.deliveries)

    def _record(self, op: str, key: str | None, *, finalize: bool = False, error: bool = False) -> None:
        length = len(self.params.get(key if key else CONTENT_KEY, ""))
        self.updates.append(
            CardUpdate(
                at=now_ms(),
                op=op,
                key=key,
                len=length,
                finalize=finalize,
                error=error,
                flow_status=self.flow_status,
            )
        )

    def record_delivery(self, delivery: CardDelivery) -> None:
        self.deliveries.append(delivery)
        self._record("deliver", None)

    def stream(
        self, *, key: str, content: str, is_full: bool, is_finalize: bool, is_error: bool, guid: str | None
    ) -> bool:
        """Apply one `PUT /v1.0/card/streaming`. Returns False for a repeated guid (ignored,
        as DingTalk treats guid as the idempotency key of one streaming update)."""
        if guid:
            if guid in self.seen_guids:
                return False
            self.seen_guids.add(guid)
        if is_full:
            self.params[key] = content
        else:
            self.params[key] = self.params.get(key, "") + content
        if is_error:
            self.streams[key] = "failed"
            self.error = True
        elif is_finalize:
            self.streams[key] = "finalized"
            self.finalized = True
        else:
            self.streams[key] = "streaming"
        self._record("full" if is_full else "append", key, finalize=is_finalize, error=is_error)
        return True

    def update_params(self, params: dict[str, str], *, by_key: bool) -> None:
        """`PUT /v1.0/card/instances`: merge with updateCardDataByKey, else replace the map. An
        update that sets the flow status to finished or failed ends the card (recorded as
        finalizing it)."""
        if by_key:
            self.params.update(params)
        else:
            self.params = dict(params)
        ends = FLOW_STATUS_KEY in params and self._apply_flow_status()
        self._record("update", None, finalize=ends, error=ends and self.error)

    def _apply_flow_status(self) -> bool:
        """Whether the card's flow status ends it (and marks it failed, for failed)."""
        if self.flow_status == FAILED:
            self.error = True
        if self.flow_status in (FINISHED, FAILED):
            self.finalized = True
            return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "out_track_id": self.out_track_id,
            "template_id": self.template_id,
            "params": dict(self.params),
            "content": self.content,
            "flow_status": self.flow_status,
            "finalized": self.finalized,
            "error": self.error,
            "streams": dict(self.streams),
            "updates": [update.to_json() for update in self.updates],
            "created_at": self.created_at,
            "delivered": self.delivered,
            "spaces": [
                {
                    "space_type": d.space_type,
                    "space_id": d.space_id,
                    "conversation_id": d.conversation_id,
                    "at": d.at,
                }
                for d in self.deliveries
            ],
        }


def param_map_from_card_data(card_data: dict[str, Any] | None) -> dict[str, Any]:
    """`cardData.cardParamMap`, or an empty map when the caller sent no cardData."""
    if card_data is None:
        return {}
    param_map = card_data.get("cardParamMap") or {}
    if not isinstance(param_map, dict):
        raise OpenApiError(400, "param.cardParamMap.invalid", "cardParamMap must be an object")
    return param_map
