"""Feishu's long-connection frames (protobuf `pbbp2.Frame`), and payloads sent in chunks.

The frame classes are the SDK's own (`lark_oapi/ws/pb/pbbp2_pb2.py`), loaded without the SDK:
importing `lark_oapi` runs its whole API surface (about 160 MB and 5 s), while the frame module
and the protobuf runtime it carries cost a few MB. The SDK's packages stand in as empty
placeholders while the frame module loads, and leave `sys.modules` afterwards, so an
`import lark_oapi` later (imsim, the contract tests) still gets the real SDK (which then finds
its frame module loaded).
"""

import functools
import importlib
import importlib.util
import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

FRAME_MODULE = "lark_oapi.ws.pb.pbbp2_pb2"

# `method` of a frame.
CONTROL = 0
DATA = 1
# Header keys and `type` values.
TYPE = "type"
MESSAGE_ID = "message_id"
SUM = "sum"
SEQ = "seq"
TRACE_ID = "trace_id"
BIZ_RT = "biz_rt"
EVENT = "event"
CARD = "card"
PING = "ping"
PONG = "pong"

ACK_OK = json.dumps({"code": 200}).encode()


def _load_frame_module() -> ModuleType:
    """The SDK's `pbbp2_pb2`, without running `lark_oapi/__init__.py` or `lark_oapi/ws/__init__.py`."""
    loaded = sys.modules.get(FRAME_MODULE)
    if loaded is not None:  # the SDK itself is imported already
        return loaded
    spec = importlib.util.find_spec("lark_oapi")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lark-oapi is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    placeholders: list[str] = []
    for name, path in (("lark_oapi", root), ("lark_oapi.ws", root / "ws")):
        if name not in sys.modules:
            package = ModuleType(name)
            package.__path__ = [str(path)]
            package.__package__ = name
            sys.modules[name] = package
            placeholders.append(name)
    try:
        return importlib.import_module(FRAME_MODULE)
    finally:
        # Only the placeholders go: the modules loaded below them stay, so what the protobuf
        # runtime imports lazily later (option descriptors, on the first serialization) finds
        # its parents and never runs the real `lark_oapi/__init__.py` on the event loop.
        for name in placeholders:
            del sys.modules[name]


@functools.cache
def frame_module() -> ModuleType:
    """Loaded at the first frame, not at import: a connector without Feishu channels never
    pays for it (about 9 MB)."""
    return _load_frame_module()


def new_frame(**fields: Any) -> Any:
    """A `pbbp2.Frame`."""
    return frame_module().Frame(**fields)


def decode(raw: bytes) -> Any:
    """A frame from the socket; ValueError when the bytes are not one."""
    frame = new_frame()
    try:
        frame.ParseFromString(raw)
    except Exception as exc:  # the SDK's protobuf raises its own DecodeError
        raise ValueError(f"not a pbbp2 frame: {exc}") from exc
    return frame


def header(frame: Any, key: str) -> str | None:
    for entry in frame.headers:
        if entry.key == key:
            return str(entry.value)
    return None


def ping(service_id: int) -> bytes:
    frame = new_frame(SeqID=0, LogID=0, service=service_id, method=CONTROL)
    frame.headers.add(key=TYPE, value=PING)
    return bytes(frame.SerializeToString())


def ack(frame: Any, took_ms: int) -> bytes:
    """The frame sent back with `{"code":200}` (and how long we took): the event is ours."""
    answer = new_frame()
    answer.CopyFrom(frame)
    answer.headers.add(key=BIZ_RT, value=str(max(0, took_ms)))
    answer.payload = ACK_OK
    return bytes(answer.SerializeToString())


@dataclass
class _Parts:
    total: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks.values())


class Reassembly:
    """Payloads Feishu split over several frames (`sum` parts, `seq` 0…sum-1), joined again.

    Bounded: at most `max_messages` payloads wait for their parts, each for `ttl_s`, in all at
    most `max_bytes`; the oldest go first. A payload lost that way is not ACKed, so Feishu
    sends it again."""

    def __init__(
        self,
        max_messages: int = 64,
        max_bytes: int = 8 * 1024 * 1024,
        ttl_s: float = 10.0,
        max_parts: int = 64,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.max_parts = max_parts
        self._waiting: OrderedDict[str, _Parts] = OrderedDict()
        self.dropped = 0  # payloads given up on (expired, evicted, malformed parts)

    def add(self, message_id: str, total: int, seq: int, chunk: bytes) -> bytes | None:
        """The whole payload once its last part arrived; None while parts are missing.
        ValueError for a part that cannot belong to any payload."""
        if total <= 1:
            return chunk
        if total > self.max_parts or not 0 <= seq < total:
            self.dropped += 1
            raise ValueError(f"part {seq} of {total}")
        now = time.monotonic()
        self._expire(now)
        parts = self._waiting.get(message_id)
        if parts is None or parts.total != total:
            parts = self._waiting[message_id] = _Parts(total, now)
        parts.chunks[seq] = chunk
        if len(parts.chunks) == total:
            del self._waiting[message_id]
            return b"".join(parts.chunks[i] for i in range(total))
        self._bound()
        return None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _expire(self, now: float) -> None:
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            if now - oldest.started < self.ttl_s:
                break
            self._waiting.popitem(last=False)
            self.dropped += 1

    def _bound(self) -> None:
        total = sum(p.size for p in self._waiting.values())
        while self._waiting and (len(self._waiting) > self.max_messages or total > self.max_bytes):
            _, parts = self._waiting.popitem(last=False)
            total -= parts.size
            self.dropped += 1
