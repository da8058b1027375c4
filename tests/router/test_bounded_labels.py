"""Router metrics cannot be grown by senders: unknown message types share one label."""

import uuid

from prometheus_client import REGISTRY

from imgate_connector.platforms.dingtalk.translate import translate
from imgate_router.service import InboundRouter
from tests.router.conftest import inbound


def series_types() -> set[str]:
    return {
        sample.labels["type"]
        for metric in REGISTRY.collect()
        if metric.name == "imgate_router_messages"
        for sample in metric.samples
    }


async def test_made_up_message_types_are_counted_as_other(router: InboundRouter, channel_id: int) -> None:
    made_up = [f"type-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    for n, kind in enumerate(made_up):
        payload = inbound(channel_id, f"odd-{n}").raw | {"msgtype": kind, "content": {"x": 1}}
        payload.pop("text")
        await router.handle(translate(payload, channel_id, None))
    types = series_types()
    assert "other" in types
    assert not types & set(made_up)
