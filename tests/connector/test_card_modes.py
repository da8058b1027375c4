"""The renderer under the app's card-call scheduler: finals overtake updates, one-call answers."""

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from imgate_common.messages import InboundMessage, ReplyTarget, RunStarted, run_id_for
from imgate_connector.platforms.base import CardText
from imgate_connector.rendering import CardRenderer
from imgate_connector.scheduler import CallClass, CardCallScheduler, CardMode
from tests.connector.conftest import Start
from tests.connector.sim import Sim
from tests.connector.test_rendering import RecordingSurface, delta, done, inbound, renderer, until_true
from tests.connector.test_scheduler import quick_load_window  # noqa: F401 (a fixture)
from tests.support.factories import reply_target

TARGET = reply_target()


@dataclass
class ScheduledSurface(RecordingSurface):
    """Every card call waits for its turn in a real scheduler, as DingTalk's surface does."""

    scheduler: CardCallScheduler | None = None
    at: dict[str, float] = field(default_factory=dict)

    async def _turn(self, cls: CallClass, card_id: str | None = None, since: float | None = None) -> bool:
        assert self.scheduler is not None
        return await self.scheduler.acquire(cls, key=card_id, order=since)

    async def open_card(self, card_id: str, target: ReplyTarget) -> None:
        await self._turn(CallClass.OPEN)
        await super().open_card(card_id, target)

    async def update_card(self, card_id: str, text: CardText, *, since: float | None = None) -> bool:
        if not await self._turn(CallClass.STREAM, card_id, since):
            return False
        return await super().update_card(card_id, text)

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        await self._turn(CallClass.FINAL)
        self.at[card_id] = time.monotonic()
        await super().close_card(card_id, text, failed=failed)

    def card_admitted(self) -> bool:
        assert self.scheduler is not None
        return self.scheduler.admit()

    def withdraw(self, card_id: str) -> None:
        assert self.scheduler is not None
        self.scheduler.withdraw(card_id)


async def card_opened_at_two_calls_a_second(
    redis: Redis, prefix: str
) -> tuple[CardCallScheduler, ScheduledSurface, CardRenderer]:
    """A run's card, open: its app's next slot is half a second away."""
    scheduler = CardCallScheduler(redis, prefix, "app", rate=2)
    surface = ScheduledSurface(scheduler=scheduler)
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await until_true(lambda: surface.kinds() == ["open"])
    return scheduler, surface, cards


async def test_a_final_does_not_wait_behind_its_cards_waiting_update(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler, surface, cards = await card_opened_at_two_calls_a_second(redis_client, key_prefix)
    await cards.handle(delta(1, "Part", 4))
    await asyncio.sleep(0.05)  # the update waits for the next slot, half a second away
    assert scheduler.waiting == 1
    started = time.monotonic()
    await cards.handle(done("Part and the rest"))
    # The waiting update was withdrawn: the final took the next slot itself.
    assert surface.kinds() == ["open", "close"]
    assert time.monotonic() - started < 1.0
    await cards.close()


@pytest.mark.usefixtures("quick_load_window")
async def test_with_no_room_for_cards_an_answer_is_one_message_and_cards_come_back(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=40, card_calls=3)
    surface = ScheduledSurface(scheduler=scheduler)
    cards, health = renderer(surface)

    async def answer(message_id: str) -> None:
        run_id = run_id_for("dingtalk", 1, message_id)
        await cards.handle(done(f"answer {message_id}", run=run_id))

    # 10 answers at once (in a load window of 0.3 s), 3 card calls each: far more than 40 calls/s
    # carry. Once the answers of the window need more than the rate (4 x 3 calls in 0.3 s), the
    # others go out in one message each (their rationed share comes only as time passes).
    for i in range(10):
        cards.accepted(inbound(f"q{i}", message_id=f"m{i}"))
    for i in range(10):
        await answer(f"m{i}")
    assert surface.kinds().count("open") == 4 and surface.kinds().count("close") == 4
    assert sorted(c[2] for c in surface.calls if c[0] == "markdown") == [f"answer m{i}" for i in range(4, 10)]
    assert health.fallback_replies == 0, "by design, not a failure"
    assert scheduler.mode is CardMode.ONE_CALL

    await asyncio.sleep(1.2)  # the load is gone
    assert scheduler.mode is CardMode.FULL
    cards.accepted(inbound("again", message_id="m10"))
    await answer("m10")
    assert surface.kinds()[-2:] == ["open", "close"]
    await cards.close()


async def test_a_budget_set_to_the_platforms_limit_is_never_throttled(sim: Sim, run_adapter: Start) -> None:
    """Against a platform counting exactly `card_qps` calls per sliding second: no 403 at all."""
    got: list[InboundMessage] = []

    async def sink(inbound: InboundMessage) -> None:
        got.append(inbound)

    adapter, _ = await run_adapter(sink, card_qps=40)
    await sim.send("hi")
    await until_true(lambda: bool(got))
    target = got[0].target
    await sim.faults(card_qps_limit=40)
    await asyncio.gather(*(adapter.surface.open_card(f"lim-{i}", target) for i in range(100)))
    assert adapter.health.rate_limit_hits == 0
    assert (await sim.counters())["throttled"]["403"] == 0


async def test_an_update_that_waited_for_its_turn_shows_the_newest_text(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler, surface, cards = await card_opened_at_two_calls_a_second(redis_client, key_prefix)
    await cards.handle(delta(1, "One", 3))
    await asyncio.sleep(0.05)
    assert scheduler.waiting == 1  # the next slot is half a second away
    await cards.handle(delta(2, " two", 7))
    await cards.handle(delta(3, " three", 13))
    await until_true(lambda: "update" in surface.kinds())
    assert [c[2] for c in surface.calls if c[0] == "update"] == ["One two three"]
    await cards.close()


async def test_the_channels_status_says_how_its_apps_cards_are_used(sim: Sim, run_adapter: Start) -> None:
    adapter, health = await run_adapter(card_qps=40)
    assert health.snapshot().card_mode == "full"
    scheduler = adapter.surface.scheduler
    while scheduler.admit():  # answers arriving far faster than 40 calls/s carry cards
        pass
    assert health.snapshot().card_mode == "one-call"
