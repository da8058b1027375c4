"""Feishu's frames: the SDK's own protobuf classes, loaded without the SDK, and chunked payloads."""

import json
import subprocess
import sys
import textwrap

import pytest

from imgate_connector.platforms.feishu import frames


def event_frame(payload: bytes, *, message_id: str = "m1", total: int = 1, seq: int = 0) -> bytes:
    frame = frames.new_frame(SeqID=7, LogID=9, service=3, method=frames.DATA, payload=payload)
    for key, value in (
        ("type", "event"),
        ("message_id", message_id),
        ("sum", str(total)),
        ("seq", str(seq)),
        ("trace_id", "t1"),
    ):
        frame.headers.add(key=key, value=value)
    return bytes(frame.SerializeToString())


def test_a_frame_round_trips_with_its_headers() -> None:
    frame = frames.decode(event_frame(b'{"a":1}'))
    assert (frame.SeqID, frame.LogID, frame.service, frame.method) == (7, 9, 3, frames.DATA)
    assert frames.header(frame, "message_id") == "m1" and frames.header(frame, "nope") is None
    assert frame.payload == b'{"a":1}'


def test_the_ack_is_the_frame_sent_back_with_code_200_and_the_time_taken() -> None:
    frame = frames.decode(event_frame(b'{"big":"event"}'))
    answer = frames.decode(frames.ack(frame, 42))
    assert json.loads(answer.payload) == {"code": 200}
    assert frames.header(answer, "biz_rt") == "42"
    assert frames.header(answer, "message_id") == "m1" and answer.SeqID == 7 and answer.service == 3


def test_a_ping_is_a_control_frame_of_the_service() -> None:
    ping = frames.decode(frames.ping(33))
    assert (ping.method, ping.service, frames.header(ping, "type")) == (frames.CONTROL, 33, "ping")


def test_bytes_that_are_no_frame_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        frames.decode(b"\xff\xff\xff not protobuf")


def test_chunks_are_joined_in_order_whatever_order_they_come_in() -> None:
    joined = frames.Reassembly()
    assert joined.add("m", 3, 2, b"c") is None
    assert joined.add("m", 3, 0, b"a") is None
    assert joined.add("m", 3, 1, b"b") == b"abc"
    assert joined.waiting == 0
    assert joined.add("single", 1, 0, b"whole") == b"whole"


def test_waiting_chunks_are_bounded_in_number_bytes_and_time() -> None:
    joined = frames.Reassembly(max_messages=2, max_bytes=10, ttl_s=60)
    joined.add("a", 2, 0, b"1")
    joined.add("b", 2, 0, b"2")
    joined.add("c", 2, 0, b"3")  # a goes: only two wait
    assert joined.waiting == 2 and joined.dropped == 1
    assert joined.add("a", 2, 1, b"x") is None, "its first part is gone: never a half payload"
    joined.add("big", 2, 0, b"0123456789AB")  # over the byte bound: the oldest go
    assert joined.waiting <= 2 and joined.dropped >= 2
    late = frames.Reassembly(ttl_s=0)
    late.add("m", 2, 0, b"a")
    assert late.add("m", 2, 1, b"b") is None and late.dropped == 1


@pytest.mark.parametrize(("total", "seq"), [(2, 2), (2, -1), (1000, 0)])
def test_a_part_that_cannot_belong_to_a_payload_is_refused(total: int, seq: int) -> None:
    with pytest.raises(ValueError):
        frames.Reassembly().add("m", total, seq, b"x")


def run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=True, capture_output=True, text=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_using_the_frames_never_loads_the_sdk_and_it_stays_importable() -> None:
    found = run(
        """
        import json, sys
        from imgate_connector.platforms.feishu import frames
        # Every use once: the protobuf runtime imports some of its parts on first use.
        frame = frames.decode(frames.ping(5))
        frames.decode(frames.ack(frame, 3))
        frames.header(frame, "type")
        sdk_run = sorted(n for n in ("lark_oapi", "lark_oapi.ws", "lark_oapi.api") if n in sys.modules)
        import lark_oapi
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame
        theirs = Frame()
        theirs.ParseFromString(frames.ping(5))
        sdk = Frame(SeqID=1, LogID=2, service=3, method=1)
        sdk.headers.add(key="type", value="event")
        back = frames.decode(sdk.SerializeToString())
        client = hasattr(lark_oapi, "ws") and hasattr(lark_oapi.ws, "Client")
        print(json.dumps({"sdk_run": sdk_run, "client": client, "theirs": theirs.service,
                          "back": frames.header(back, "type")}))
        """
    )
    assert found == {"sdk_run": [], "client": True, "theirs": 5, "back": "event"}


def test_after_the_sdk_was_imported_its_own_frame_module_is_used() -> None:
    found = run(
        """
        import json, sys
        import lark_oapi
        from imgate_connector.platforms.feishu import frames
        print(json.dumps({"same": frames.frame_module() is sys.modules["lark_oapi.ws.pb.pbbp2_pb2"]}))
        """
    )
    assert found == {"same": True}


def test_the_frames_cost_a_fraction_of_the_sdk() -> None:
    # Resident memory of the process itself (a child's ru_maxrss starts at its parent's).
    code = """
        import json, re
        def rss_kb():
            return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
        before = rss_kb()
        import {module}
        print(json.dumps({{"kb": rss_kb() - before}}))
        """
    light = run(code.format(module="imgate_connector.platforms.feishu.frames"))["kb"]
    heavy = run(code.format(module="lark_oapi"))["kb"]
    assert isinstance(light, int) and isinstance(heavy, int)
    assert 0 < light * 5 < heavy, (light, heavy)
