"""The long connection's protobuf frames (`pbbp2.Frame`, from lark-oapi): what imsim pushes
and what it reads back.

`import lark_oapi` runs the SDK's whole package (every API model: seconds and 160 MB), and the
generated module sits below it. imsim loads only the frame module and the protobuf runtime the
SDK vendors beside it, the first time a Feishu connection needs a frame."""

import importlib
import importlib.util
import json
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# Frame.method
CONTROL = 0
DATA = 1
# Header keys and values, as lark-oapi's ws/const.py and ws/enum.py name them.
HEADER_TYPE = "type"
HEADER_MESSAGE_ID = "message_id"
HEADER_SUM = "sum"
HEADER_SEQ = "seq"
HEADER_TRACE_ID = "trace_id"
HEADER_BIZ_RT = "biz_rt"
TYPE_EVENT = "event"
TYPE_CARD = "card"
TYPE_PING = "ping"
TYPE_PONG = "pong"

_PB_MODULE = "lark_oapi.ws.pb.pbbp2_pb2"


@cache
def pbbp2() -> Any:
    """lark-oapi's generated frame module, without running the SDK package's `__init__`."""
    if "lark_oapi" in sys.modules:  # the SDK is loaded already (a test driving it in process)
        return importlib.import_module(_PB_MODULE)
    spec = importlib.util.find_spec("lark_oapi")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("lark-oapi is not installed: imsim needs it for Feishu's frames")
    root = Path(next(iter(spec.submodule_search_locations)))
    # Stand-ins for the two package levels above `pb`, long enough to import below them; the
    # modules imported keep working after the stand-ins go, and a later `import lark_oapi`
    # runs the real packages.
    stand_ins = {"lark_oapi": root, "lark_oapi.ws": root / "ws"}
    for name, path in stand_ins.items():
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    try:
        return importlib.import_module(_PB_MODULE)
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


def _frame(method: int, service: int, headers: dict[str, str], payload: bytes | None) -> bytes:
    frame = pbbp2().Frame()
    frame.SeqID = 0
    frame.LogID = 0
    frame.service = service
    frame.method = method
    for key, value in headers.items():
        header = frame.headers.add()
        header.key = key
        header.value = value
    if payload is not None:
        frame.payload = payload
    data: bytes = frame.SerializeToString()
    return data


def pong_frame(service: int, client_config: dict[str, int]) -> bytes:
    """The answer to a client's ping: a control frame carrying the current client settings."""
    return _frame(CONTROL, service, {HEADER_TYPE: TYPE_PONG}, json.dumps(client_config).encode())


def data_frames(
    *, service: int, message_id: str, trace_id: str, kind: str, payload: bytes, chunk_size: int
) -> list[bytes]:
    """One data frame per chunk of `payload` (`sum` chunks, numbered by `seq` from 0)."""
    chunks = [payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size)] or [b""]
    return [
        _frame(
            DATA,
            service,
            {
                HEADER_TYPE: kind,
                HEADER_MESSAGE_ID: message_id,
                HEADER_SUM: str(len(chunks)),
                HEADER_SEQ: str(seq),
                HEADER_TRACE_ID: trace_id,
            },
            chunk,
        )
        for seq, chunk in enumerate(chunks)
    ]


@dataclass
class ClientFrame:
    """A frame the client sent: a ping, or a data frame sent back as an ACK."""

    method: int
    headers: dict[str, str]
    payload: bytes

    @property
    def type(self) -> str | None:
        return self.headers.get(HEADER_TYPE)

    @property
    def message_id(self) -> str | None:
        return self.headers.get(HEADER_MESSAGE_ID)

    def ack_code(self) -> int | None:
        """`code` of an ACK's JSON payload (`{"code": 200}`), None if it has none."""
        try:
            body = json.loads(self.payload)
        except ValueError:
            return None
        code = body.get("code") if isinstance(body, dict) else None
        return code if isinstance(code, int) else None


def parse_client_frame(data: bytes) -> ClientFrame | None:
    """None for bytes that are no frame."""
    frame = pbbp2().Frame()
    try:
        frame.ParseFromString(data)
    except Exception:  # the vendored runtime raises its own DecodeError
        return None
    return ClientFrame(frame.method, {h.key: h.value for h in frame.headers}, bytes(frame.payload))
