"""CardCallScheduler: one app's card calls by priority, paced through one Redis record per app."""

import asyncio
import time

import pytest
from redis.asyncio import Redis

from imgate_connector import scheduler as scheduling
from imgate_connector.scheduler import CallClass, CardCallScheduler, CardMode, CardSchedulers


def most_in_one_second(times: list[float]) -> int:
    """The most calls a platform counting per sliding second would see at once (as DingTalk's
    QpsLimit, and imsim's, count them: the calls of the last second before each one, and it)."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def calls(scheduler: CardCallScheduler, cls: CallClass, count: int, granted: list[float]) -> None:
    for _ in range(count):
        assert await scheduler.acquire(cls)
        granted.append(time.monotonic())


async def test_finals_go_first_then_opens_then_the_longest_waiting_reader(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=8)
    order: list[str] = []

    async def call(name: str, cls: CallClass, since: float | None = None) -> None:
        if await scheduler.acquire(cls, key=name if cls is CallClass.STREAM else None, order=since):
            order.append(name)

    now = time.monotonic()
    # All queued in one go, streaming first: the queue orders them by class, then by wait.
    tasks = [
        asyncio.create_task(call("stream-new", CallClass.STREAM, since=now - 0.1)),
        asyncio.create_task(call("stream-old", CallClass.STREAM, since=now - 3.0)),
        asyncio.create_task(call("open-1", CallClass.OPEN)),
        asyncio.create_task(call("stream-mid", CallClass.STREAM, since=now - 1.0)),
        asyncio.create_task(call("final-1", CallClass.FINAL)),
        asyncio.create_task(call("open-2", CallClass.OPEN)),
        asyncio.create_task(call("final-2", CallClass.FINAL)),
    ]
    await asyncio.gather(*tasks)
    assert order == ["final-1", "final-2", "open-1", "open-2", "stream-old", "stream-mid", "stream-new"]


async def test_a_call_that_arrives_later_with_higher_priority_overtakes_waiting_updates(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=4)
    order: list[str] = []

    async def update(card: str) -> None:
        if await scheduler.acquire(CallClass.STREAM, key=card, order=0.0):
            order.append(card)

    updates = [asyncio.create_task(update(f"card-{i}")) for i in range(4)]
    await asyncio.sleep(0.05)  # the first slot went to an update; the others wait
    assert await scheduler.acquire(CallClass.FINAL)
    order.append("final")
    await asyncio.gather(*updates)
    assert order.index("final") <= 2, order


async def test_a_newer_update_of_a_card_replaces_its_waiting_one(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=2)
    assert await scheduler.acquire(CallClass.FINAL)  # the next slot is half a second away
    older = asyncio.create_task(scheduler.acquire(CallClass.STREAM, key="card"))
    await asyncio.sleep(0)
    newer = asyncio.create_task(scheduler.acquire(CallClass.STREAM, key="card"))
    assert await older is False
    assert await newer is True


async def test_a_withdrawn_update_does_not_go_and_frees_the_slot(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=2)
    assert await scheduler.acquire(CallClass.FINAL)
    update = asyncio.create_task(scheduler.acquire(CallClass.STREAM, key="card"))
    await asyncio.sleep(0.05)
    scheduler.withdraw("card")
    assert await update is False
    assert scheduler.waiting == 0


async def test_two_schedulers_of_one_app_never_exceed_its_limit_and_spend_it(
    redis_client: Redis, key_prefix: str
) -> None:
    limit = 20
    a = CardCallScheduler(redis_client, key_prefix, "app", rate=limit)
    b = CardCallScheduler(redis_client, key_prefix, "app", rate=limit)
    other = CardCallScheduler(redis_client, key_prefix, "other-app", rate=limit)
    granted: list[float] = []
    elsewhere: list[float] = []
    started = time.monotonic()
    await asyncio.gather(
        *(calls(s, cls, 12, granted) for s in (a, b) for cls in (CallClass.FINAL, CallClass.OPEN)),
        calls(other, CallClass.FINAL, 20, elsewhere),
    )
    took = time.monotonic() - started
    assert len(granted) == 48
    assert most_in_one_second(granted) <= limit
    # Spent, not hoarded: about the paced rate while calls wait (loose: the machine may be busy).
    assert len(granted) / took >= 0.8 * limit, took
    assert len(elsewhere) == 20 and elsewhere[-1] - started < took, "each app has its own rate"


async def test_calls_cost_few_redis_round_trips_and_an_idle_queue_none(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=40)
    granted: list[float] = []
    await asyncio.gather(*(calls(scheduler, CallClass.OPEN, 5, granted) for _ in range(12)))
    assert len(granted) == 60
    # Several slots per round trip (up to a quarter second's worth), no polling while waiting.
    assert scheduler.round_trips <= 60 / 4, scheduler.round_trips
    trips = scheduler.round_trips
    await asyncio.sleep(0.6)
    assert scheduler.round_trips == trips, "nobody waits: no Redis calls at all"


async def test_throttling_halves_the_rate_and_it_recovers(redis_client: Redis, key_prefix: str) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=40)
    assert await scheduler.penalize() == 20
    assert await scheduler.penalize() == 10
    granted: list[float] = []
    await calls(scheduler, CallClass.FINAL, 6, granted)
    assert most_in_one_second(granted) <= 10, "slower now"
    assert granted[-1] - granted[0] >= 4 / 10, "at about 10/s"
    await asyncio.sleep(0.5)
    await calls(scheduler, CallClass.FINAL, 1, granted)
    assert 10 < scheduler.rate < 40
    fields = await redis_client.hgetall(f"{key_prefix}:card-budget:app")
    assert 10 < float(fields[b"rate"]) < 40


async def test_slots_left_over_are_handed_back(redis_client: Redis, key_prefix: str) -> None:
    a = CardCallScheduler(redis_client, key_prefix, "app", rate=4)
    b = CardCallScheduler(redis_client, key_prefix, "app", rate=4)
    assert await a.acquire(CallClass.FINAL)
    # Two updates wait: a reserves a slot for each, then both are withdrawn.
    waiting = [asyncio.create_task(a.acquire(CallClass.STREAM, key=f"c{i}")) for i in range(2)]
    await asyncio.sleep(0.02)
    for i in range(2):
        a.withdraw(f"c{i}")
    assert await asyncio.gather(*waiting) == [False, False]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await b.acquire(CallClass.FINAL)
    assert time.monotonic() - started < 0.4, "b had the first slot a did not use"


async def test_one_app_has_one_scheduler_in_the_process(redis_client: Redis, key_prefix: str) -> None:
    schedulers = CardSchedulers()
    first = schedulers.get(redis_client, key_prefix, "app", 20, call_timeout_s=1, card_calls=3)
    again = schedulers.get(redis_client, key_prefix, "app", 30, call_timeout_s=1, card_calls=3)
    assert first is again and first.limit == 30, "the newest setting of the app wins"
    assert schedulers.get(redis_client, key_prefix, "b", 20, call_timeout_s=1, card_calls=3) is not first


@pytest.fixture
def quick_load_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load averaged over a fraction of a second, so degradation and recovery fit a test."""
    monkeypatch.setattr(scheduling, "LOAD_WINDOW_S", 0.3)
    monkeypatch.setattr(scheduling, "STREAM_LAG_S", 0.2)


@pytest.mark.usefixtures("quick_load_window")
async def test_more_answers_than_cards_fit_go_to_one_call_and_come_back(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=40, card_calls=3)
    assert scheduler.mode is CardMode.FULL
    assert scheduler.admit()
    # 10 more answers at once, in a window of 0.3 s: 3 calls each do not fit into 40 calls/s.
    admitted = [scheduler.admit() for _ in range(10)]
    assert not all(admitted) and scheduler.mode is CardMode.ONE_CALL
    await asyncio.sleep(1.2)
    assert scheduler.mode is CardMode.FULL
    assert scheduler.admit()


@pytest.mark.usefixtures("quick_load_window")
async def test_finals_waiting_long_mean_one_call_too(
    redis_client: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other replicas may spend the app's calls: a final waiting long says so here too."""
    monkeypatch.setattr(scheduling, "MUST_LAG_S", 0.3)
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=4)
    granted: list[float] = []
    await asyncio.gather(*(calls(scheduler, CallClass.FINAL, 1, granted) for _ in range(4)))
    assert scheduler.mode is CardMode.ONE_CALL
    assert not scheduler.admit()


@pytest.mark.usefixtures("quick_load_window")
async def test_streaming_thins_while_updates_wait_and_returns_to_full(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=40)
    shown = await asyncio.gather(*(scheduler.acquire(CallClass.STREAM, key=f"c{i}") for i in range(12)))
    assert all(shown)
    assert scheduler.mode is CardMode.THIN
    assert scheduler.admit(), "cards still open while only streaming is short"
    await asyncio.sleep(1.0)
    assert scheduler.mode is CardMode.FULL


async def test_updates_withdrawn_while_finals_keep_coming_do_not_pile_up(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=2)
    assert await scheduler.acquire(CallClass.FINAL)
    final = asyncio.create_task(scheduler.acquire(CallClass.FINAL))  # waits half a second
    for n in range(500):  # cards whose update waited, then their final came
        update = asyncio.create_task(scheduler.acquire(CallClass.STREAM, key=f"card-{n}"))
        await asyncio.sleep(0)
        scheduler.withdraw(f"card-{n}")
        assert await update is False
    assert scheduler.waiting == 1
    assert len(scheduler._heap) <= 2 * scheduler.waiting + scheduling.HEAP_SLACK + 1
    assert await final


@pytest.mark.usefixtures("quick_load_window")
async def test_cards_come_back_while_a_load_that_fits_goes_on(redis_client: Redis, key_prefix: str) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=40, card_calls=3)
    for _ in range(12):  # a burst far beyond 40 calls/s
        scheduler.admit()
    assert scheduler.mode is CardMode.ONE_CALL
    admitted = []
    for _ in range(15):  # then 10 answers/s: 30 calls/s for their cards, under 40
        await asyncio.sleep(0.1)
        admitted.append(scheduler.admit())
    assert admitted[-5:] == [True] * 5, admitted


@pytest.mark.usefixtures("quick_load_window")
async def test_under_lasting_overload_as_many_answers_get_a_card_as_the_rate_carries(
    redis_client: Redis, key_prefix: str
) -> None:
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=40, card_calls=3)
    admitted = []
    for _ in range(60):  # 30 answers/s for 2 s: 90 calls/s for their cards, of 40
        admitted.append(scheduler.admit())
        await asyncio.sleep(1 / 30)
    assert scheduler.mode is CardMode.ONE_CALL
    later = admitted[20:]
    # About 0.75 x 38 / 3 = 9.5 cards/s of the 30 answers/s; the others go in one message each.
    assert 0.15 * len(later) <= sum(later) <= 0.5 * len(later), admitted


async def _answer_with_a_card(
    scheduler: CardCallScheduler, name: str, writes_s: float, granted: list[float]
) -> bool:
    """One answer as the renderer gives it: a card if admitted (open, streaming updates while the
    model writes, final), else one message (no card call). True when it had a card."""
    if not scheduler.admit():
        return False
    assert await scheduler.acquire(CallClass.OPEN)
    granted.append(time.monotonic())
    writing = True

    async def stream() -> None:
        while writing:
            if await scheduler.acquire(CallClass.STREAM, key=name):
                granted.append(time.monotonic())
            await asyncio.sleep(0.1)

    streaming = asyncio.create_task(stream())
    await asyncio.sleep(writes_s)
    writing = False
    scheduler.withdraw(name)
    await streaming
    assert await scheduler.acquire(CallClass.FINAL)
    granted.append(time.monotonic())
    return True


@pytest.mark.usefixtures("quick_load_window")
async def test_under_lasting_overload_rationed_cards_and_streaming_spend_the_budget_never_more(
    redis_client: Redis, key_prefix: str
) -> None:
    limit = 40
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=limit, card_calls=2)
    granted: list[float] = []
    answers: list[asyncio.Task[bool]] = []
    started = time.monotonic()
    for n in range(90):  # 30 answers/s for 3 s: 60 calls/s for their opens and finals alone
        answers.append(asyncio.create_task(_answer_with_a_card(scheduler, f"c{n}", 0.6, granted)))
        await asyncio.sleep(max(0.0, started + (n + 1) / 30 - time.monotonic()))
    sending_ended = time.monotonic()
    assert scheduler.mode is CardMode.ONE_CALL
    carded = await asyncio.gather(*answers)
    assert 0 < sum(carded) < len(carded), "cards rationed, not switched off"
    assert most_in_one_second(granted) <= limit
    # Spent while answers keep coming: the slots cards' opens and finals leave go to other
    # cards or to streaming (loose: the machine may be busy).
    loaded = [at for at in granted if started + 0.5 <= at <= sending_ended]
    assert len(loaded) / (sending_ended - started - 0.5) >= 0.8 * limit * scheduling.PACED_SHARE


@pytest.mark.usefixtures("quick_load_window")
async def test_while_rationing_an_answer_arriving_at_an_idle_queue_gets_a_card(
    redis_client: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduling, "CARDS_IN_ONE_CALL", 0.0)  # no rationed share: idle slots only
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=40, card_calls=2)
    burst = [scheduler.admit() for _ in range(12)]  # far beyond 40 calls/s
    assert scheduler.mode is CardMode.ONE_CALL
    # Once rationing began, the first answer found the queue idle; the rest of the burst did not
    # (the slots that card's calls take come first).
    refused = burst.index(False)
    assert burst[refused:] == [False] * (len(burst) - refused), burst
    await asyncio.sleep(0.1)  # the slots that card's calls take have passed
    assert scheduler.waiting == 0
    assert scheduler.admit(), "nothing waits: its slots would pass unused"
    assert not scheduler.admit(), "the next idle card waits for the slots the last one takes"
    updates = [asyncio.create_task(scheduler.acquire(CallClass.STREAM, key=f"c{n}")) for n in range(20)]
    await asyncio.sleep(0.1)  # the spacing has passed; about 4 of the 20 went
    assert scheduler.waiting
    assert not scheduler.admit(), "calls wait: no slot passes unused"
    for n in range(20):
        scheduler.withdraw(f"c{n}")
    await asyncio.gather(*updates)
    assert scheduler.waiting == 0 and scheduler.admit()


async def test_once_a_backlog_of_finals_drained_new_answers_get_cards_again_at_once(
    redis_client: Redis, key_prefix: str
) -> None:
    """Cards are refused for finals waiting now, not for a recent peak: a peak still decaying
    would leave the slots of the next seconds to nobody, the cards in flight being done."""
    scheduler = CardCallScheduler(redis_client, key_prefix, "app", rate=4, card_calls=2)
    granted: list[float] = []
    await asyncio.gather(*(calls(scheduler, CallClass.FINAL, 1, granted) for _ in range(6)))
    assert scheduler.mode is CardMode.ONE_CALL, "the last finals waited over a second"
    assert scheduler.waiting == 0
    await asyncio.sleep(1.0)  # the rationed share has a card again; the peak is not forgotten yet
    assert scheduler.mode is CardMode.ONE_CALL
    assert scheduler.admit()
