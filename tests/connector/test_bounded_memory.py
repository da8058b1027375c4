"""A connector replica's memory does not grow with cards it never closes."""

from imgate_common.messages import InboundMessage
from imgate_connector.platforms.dingtalk.cards import STREAMING_CARDS_KEPT
from tests.connector.conftest import Start
from tests.connector.sim import Sim


async def test_cards_never_closed_here_are_not_remembered_forever(sim: Sim, run_adapter: Start) -> None:
    async def sink(inbound: InboundMessage) -> None:
        return None

    adapter, _ = await run_adapter(sink)
    surface = adapter.surface

    async def granted(card_id: str, call: object, since: float | None) -> bool:  # the platform took it
        return True

    surface._may = granted  # type: ignore[attr-defined,method-assign]
    for n in range(STREAMING_CARDS_KEPT + 300):  # cards whose runs moved to another replica
        assert await surface.update_card(f"card-{n}", "partial answer")
    assert len(surface._streaming) == STREAMING_CARDS_KEPT  # type: ignore[attr-defined]
