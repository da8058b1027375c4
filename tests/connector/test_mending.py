"""CardMender: a card a failed call left open is closed once card calls go through again."""

from imgate_common.errors import PlatformError
from imgate_connector.health import ChannelHealth
from imgate_connector.mending import CardMender, MendPolicy
from imgate_connector.platforms.base import CardsUnavailable
from tests.connector.sim import until
from tests.connector.test_rendering import RecordingSurface

PAUSED_TRIES = 8


class PausedCards(RecordingSurface):
    """Card calls paused (the circuit is open) for the first `paused` closes, then fine."""

    def __init__(self, paused: int, error: PlatformError) -> None:
        super().__init__()
        self.paused = paused
        self.error = error
        self.tries = 0

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        self.tries += 1
        if self.tries <= self.paused:
            raise self.error
        await super().close_card(card_id, text, failed=failed)


async def mend_one(surface: PausedCards, policy: MendPolicy, within_s: float) -> float:
    """Seconds until the mender closed the card."""
    mender = CardMender(surface, ChannelHealth(channel_id=1, owner="test"), policy)
    mender.close_later("card-1", "dingtalk", "sent below")

    async def closed() -> bool:
        return mender.pending == 0

    try:
        return await until(closed, within=within_s)
    finally:
        await mender.close()


async def test_a_card_closes_as_soon_as_paused_card_calls_resume() -> None:
    # Each pause ends 50 ms on. Backing off instead (50 ms, doubling per try) would wait
    # 0.05 × (2^8 - 1) ≈ 13 s before the ninth try; resuming with the calls takes about 1 s.
    surface = PausedCards(PAUSED_TRIES, CardsUnavailable("paused", retry_in_s=0.05))
    await mend_one(surface, MendPolicy(first_retry_s=0.05, max_retry_s=60), within_s=5)
    assert surface.tries == PAUSED_TRIES + 1
    assert surface.calls == [("close", "card-1", "sent below")]


async def test_other_failures_still_back_off() -> None:
    surface = PausedCards(3, PlatformError("card API down", 503))
    took = await mend_one(surface, MendPolicy(first_retry_s=0.05, max_retry_s=60), within_s=5)
    # 0.05 + 0.1 + 0.2 + 0.4, each ±20 %: a back-off, not a retry per pause.
    assert took >= 0.6
    assert surface.calls == [("close", "card-1", "sent below")]
