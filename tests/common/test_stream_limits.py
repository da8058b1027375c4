"""Every stream has a byte and count cap, applied to existing streams too, and a discard rule
that fits what it holds: handled messages make room (OLD), unanswered runs are refused (NEW)."""

from dataclasses import replace

import nats
import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy
from nats.js.errors import ServiceUnavailableError

from imgate_common.bus import (
    DEAD_LETTERS_STREAM,
    INBOUND_STREAM,
    REPLIES_STREAM,
    RUNS_STREAM,
    StreamLimits,
    provision_streams,
    stream_config,
    stream_specs,
)
from imgate_common.consume import classify
from imgate_common.settings import CommonSettings


def test_every_stream_is_capped_in_bytes_and_messages() -> None:
    for spec in stream_specs():
        assert spec.max_bytes > 0, spec.name
        assert spec.max_msgs > 0, spec.name


def test_only_the_work_queue_refuses_new_messages() -> None:
    discard = {spec.name: spec.discard for spec in stream_specs()}
    assert discard == {
        INBOUND_STREAM: DiscardPolicy.OLD,
        RUNS_STREAM: DiscardPolicy.NEW,
        REPLIES_STREAM: DiscardPolicy.OLD,
        DEAD_LETTERS_STREAM: DiscardPolicy.OLD,
    }


def test_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGATE_INBOUND_MAX_BYTES", "12345678")
    monkeypatch.setenv("IMGATE_RUNS_MAX_MSGS", "77")
    limits = CommonSettings().stream_limits()
    specs = {spec.name: spec for spec in stream_specs(limits)}
    assert specs[INBOUND_STREAM].max_bytes == 12345678
    assert specs[RUNS_STREAM].max_msgs == 77


async def test_existing_unlimited_streams_take_the_limits(private_nats: str) -> None:
    """A deployment made before the limits: its streams are updated at the next start (the
    retention, which NATS will not change, stays as it was)."""
    nc = await nats.connect(private_nats)
    js = nc.jetstream()
    try:
        for spec in stream_specs():
            unlimited = replace(spec, max_bytes=-1, max_msgs=-1, discard=DiscardPolicy.OLD)
            await js.add_stream(stream_config(unlimited, 1))
        limits = StreamLimits(runs_max_msgs=2, runs_max_bytes=1024 * 1024)
        await provision_streams(js, 1, limits)
        for spec in stream_specs(limits):
            config = (await js.stream_info(spec.name)).config
            assert config.max_bytes == spec.max_bytes
            assert config.max_msgs == spec.max_msgs
            assert config.discard == spec.discard
        assert (await js.stream_info(RUNS_STREAM)).config.retention == RetentionPolicy.WORK_QUEUE

        # A full run queue refuses the next run with an error the consumers try again later.
        await js.publish("agent.run.1", b"{}", headers={"Nats-Msg-Id": "a"})
        await js.publish("agent.run.1", b"{}", headers={"Nats-Msg-Id": "b"})
        with pytest.raises(ServiceUnavailableError) as refused:
            await js.publish("agent.run.1", b"{}", headers={"Nats-Msg-Id": "c"})
        assert not classify(refused.value).permanent
        assert (await js.stream_info(RUNS_STREAM)).state.messages == 2
    finally:
        for spec in stream_specs():
            await js.delete_stream(spec.name)
        await nc.close()
