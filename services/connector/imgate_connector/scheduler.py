"""Card API calls of one platform app, scheduled by priority under the app's shared rate limit.

A platform counts card calls per app, so every replica draws from one Redis record per app. That
record hands out *time slots* (the generic cell rate algorithm): slots are spaced one interval
apart across all replicas, so together they never go faster than the app's rate. A replica asks
for several slots in one round trip (only as many as calls wait, and no further ahead than a
short horizon), then serves its waiting calls one per slot from a local queue: finals and
failures first, then card opens, then streaming updates, the card whose reader has waited
longest for new text first. No call polls; one timer per app wakes the queue when a slot is due.

A slot nobody uses is wasted, never saved up: it is valid only briefly after its time, and slots
left over when the queue empties are handed back if no replica reserved after them.

A 403 QpsLimit / 429 halves the app's rate (it climbs back by a twentieth of the configured rate
per second). The rate actually paced is a little under the limit (`PACED_SHARE`) so that the
lateness of a slot's call (event loop, network) never adds up to a call beyond the limit.

When the arrival of answers leaves no room for open + stream + final, the scheduler says so:
`thin` while streaming updates wait (they simply get fewer), `one-call` when even a card's open
and final calls do not fit, `full` again once the load has fallen. In one-call mode cards are
rationed, not switched off: a local bucket hands out as many as a share of the rate carries for
their open and final calls, and any answer arriving while no call waits (slots would pass unused)
gets one too; the others go out in one message each. Streaming updates take what is left, so
the app's rate is spent while answers keep coming.
"""

import asyncio
import contextlib
import heapq
import itertools
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

import structlog
from redis.asyncio import Redis

from imgate_connector.lease import within
from imgate_connector.metrics import (
    CARD_BUDGET_ROUND_TRIPS,
    CARD_CALL_WAIT_SECONDS,
    CARD_MODE,
    CARD_SLOTS_UNUSED,
)

log = structlog.get_logger()

# The share of the app's limit that is paced: a call may reach the platform up to `SLOT_GRACE_S`
# plus network jitter after its slot; 0.95 keeps r * (1 + 50 ms) under the limit in any second.
PACED_SHARE = 0.95
# A slot is served at most this late (an event loop running behind); later, it is dropped.
SLOT_GRACE_S = 0.025
# Slots are reserved at most this far ahead: new calls of higher priority still find slots soon,
# and another replica of the app gets its turn within a horizon.
HORIZON_S = 0.25
# Entries of calls that left the queue, beyond twice those waiting, before the heap is rebuilt.
HEAP_SLACK = 64
# Buckets of apps nobody uses any more disappear.
BUCKET_TTL_MS = 10 * 60 * 1000
# After a Redis call that timed out, the queue asks again after about this long.
REDIS_RETRY_S = 0.25
# Degradation: a card costs its open and final calls. Cards are rationed (one-call mode) when
# the calls that must happen wait longer than `MUST_LAG_S` (the queue of opens and finals grows:
# the app's calls, on all replicas, do not carry the cards), or when the answers arriving need
# more than `ONE_CALL_ABOVE` times the rate for their cards (rationing costs little, so it starts
# as soon as the cards no longer fit: every second later leaves finals queueing behind opens).
# Cards come back unrationed once they need less than `CARDS_BACK_BELOW` of the rate and the
# waits are short again, for a load window at least. Streaming is thin while its updates wait
# longer than `STREAM_LAG_S`.
ONE_CALL_ABOVE = 1.0
CARDS_BACK_BELOW = 0.85
# In one-call mode answers still get a card, as many as this share of the rate carries for their
# open and final calls (while those are served quickly; more while slots would pass unused): as
# many readers as the budget allows see "thinking…", and streaming keeps the rest of it.
CARDS_IN_ONE_CALL = 0.75
# Cards the rationing bucket holds at most: this many seconds of its rate. It starts empty when
# rationing begins (the cards given until then are what made it begin).
CARD_BURST_S = 1.0
MUST_LAG_S = 1.0
STREAM_LAG_S = 0.5
# Seconds over which arrival rates and waits are averaged (and a degraded mode lasts at least).
LOAD_WINDOW_S = 2.0

# KEYS[1] the app's record; ARGV: limit (calls/s), wanted slots, share, horizon ms, ttl ms.
# Returns {rate, ms until a slot comes within the horizon (0 when some were granted), tat,
# interval ms, slot offsets from now in µs...}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local limit = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local horizon = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'rate', 'ts', 'tat')
local rate = tonumber(s[1]) or limit
local ts = tonumber(s[2]) or now
local tat = tonumber(s[3]) or now
rate = math.min(limit, rate + math.max(0, now - ts) * limit / 20000)
local interval = 1000 / (rate * tonumber(ARGV[3]))
if tat < now then tat = now end
local out = {tostring(rate), 0, '', tostring(interval)}
while #out - 4 < want and tat <= now + horizon do
  table.insert(out, math.floor((tat - now) * 1000))
  tat = tat + interval
end
if #out == 4 then out[2] = math.ceil(tat - horizon - now) end
out[3] = tostring(tat)
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'ts', tostring(now), 'tat', tostring(tat))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return out
"""

# KEYS[1]; ARGV: tat this replica left, slots handed back, interval ms. Only if nobody reserved
# after us: the record's next slot moves back to our first unused one (never into the past).
_RELEASE = """
if redis.call('HGET', KEYS[1], 'tat') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = math.max(now, tonumber(ARGV[1]) - tonumber(ARGV[2]) * tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'tat', tostring(tat))
return 1
"""

# KEYS[1]; ARGV: limit, min rate, share, ttl ms. The platform said "too fast": halve the rate, and
# the next slot is one (new) interval after the last one handed out.
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local s = redis.call('HMGET', KEYS[1], 'rate', 'tat')
local rate = math.max(tonumber(ARGV[2]), (tonumber(s[1]) or tonumber(ARGV[1])) / 2)
local tat = math.max(now, tonumber(s[2]) or now) + 1000 / (rate * tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'ts', tostring(now), 'tat', tostring(tat))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return tostring(rate)
"""


class CallClass(IntEnum):
    """What a card call is for; a lower value goes first."""

    FINAL = 0  # the final answer, a failure, a continuation card, a card closed later
    OPEN = 1  # a card in its "thinking…" state
    STREAM = 2  # the answer so far, a queued line: optional, skipped rather than late


class CardMode(StrEnum):
    FULL = "full"  # cards open, stream and close as the renderer wants
    THIN = "thin"  # streaming updates wait for leftover slots: fewer of them
    ONE_CALL = "one-call"  # no "thinking…" card for new answers: one message each


@dataclass(eq=False)
class _Waiter:
    cls: CallClass
    order: float  # within the class: earlier goes first
    seq: int
    key: str | None
    enqueued: float
    future: "asyncio.Future[bool]"

    @property
    def rank(self) -> tuple[int, float, int]:
        return (self.cls, self.order, self.seq)


@dataclass
class _Decaying:
    """A value that decays exponentially over `LOAD_WINDOW_S` (a rate when fed with 1s)."""

    value: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def read(self, now: float) -> float:
        if now > self.at:
            self.value *= math.exp((self.at - now) / LOAD_WINDOW_S)
            self.at = now
        return self.value

    def add(self, amount: float, now: float) -> None:
        self.value = self.read(now) + amount

    def peak(self, amount: float, now: float) -> None:
        self.value = max(self.read(now), amount)


class CardCallScheduler:
    """The card calls of one app (`key`) in this process, paced by the app's shared rate."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        key: str,
        rate: float,
        *,
        call_timeout_s: float = 10.0,
        card_calls: int = 3,
    ) -> None:
        self._redis = redis
        self._key = f"{prefix}:card-budget:{key}"
        self.app = key
        self.limit = max(0.1, rate)
        self.rate = self.limit  # as the shared record last said (halved by throttling)
        # Redis calls happen under a channel's lease: Redis answers in time or not at all.
        self._timeout_s = call_timeout_s
        # Calls a card costs at least (its open and its final): what one-call mode saves.
        self.card_calls = card_calls
        self._heap: list[tuple[tuple[int, float, int], _Waiter]] = []
        self._waiting: dict[int, _Waiter] = {}
        self._streams: dict[str, _Waiter] = {}  # the waiting optional call of each card
        self._seq = itertools.count()
        self._slots: deque[float] = deque()
        self._tat = ""  # the record's next slot after our last reservation (to hand slots back)
        self._interval_ms = 1000 / self.limit
        self._pump: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._offered = _Decaying()  # answers asking for a card, per LOAD_WINDOW_S
        # Cards that rationing may still give (refilled at their share of the rate), and when.
        self._cards = 0.0
        self._cards_at = time.monotonic()
        self._spare_at = 0.0  # no card for an idle queue before this (monotonic)
        self._must_lag = _Decaying()  # longest recent wait of a call that must happen
        self._stream_lag = _Decaying()
        self._mode = CardMode.FULL
        self._mode_since = time.monotonic()
        self._recheck: asyncio.TimerHandle | None = None
        # Counters for tests, health and benchmarks.
        self.round_trips = 0
        self.granted = 0
        self.slots_unused = 0
        CARD_MODE.labels(key).set(0)

    # -- calls ------------------------------------------------------------------------------

    async def acquire(self, cls: CallClass, *, key: str | None = None, order: float | None = None) -> bool:
        """Wait for this call's turn. True: go now. False (optional calls only): skipped, because
        a newer update of the same card replaced it, it was withdrawn, or Redis did not answer.
        Calls that must happen raise what Redis raised, except timeouts (they wait on)."""
        now = time.monotonic()
        waiter = _Waiter(cls, now if order is None else order, next(self._seq), key, now, asyncio.Future())
        if cls is CallClass.STREAM and key is not None:
            self.withdraw(key)
            self._streams[key] = waiter
        self._waiting[waiter.seq] = waiter
        heapq.heappush(self._heap, (waiter.rank, waiter))
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name=f"card-calls-{self.app}")
        try:
            return await waiter.future
        finally:
            self._forget(waiter)

    def withdraw(self, key: str) -> None:
        """The optional call of card `key` still waiting for its turn is not wanted any more."""
        waiter = self._streams.pop(key, None)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(False)
            self._forget(waiter)

    async def penalize(self) -> float:
        """The platform throttled us: halve the app's rate; slots reserved at the old rate go."""
        self._drop_slots()
        call = self._redis.eval(
            _PENALIZE, 1, self._key, self.limit, max(0.5, self.limit / 20), PACED_SHARE, BUCKET_TTL_MS
        )
        self.round_trips += 1
        CARD_BUDGET_ROUND_TRIPS.inc()
        self.rate = float(await within(self._timeout_s, call))  # type: ignore[arg-type]
        return self.rate

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _forget(self, waiter: _Waiter) -> None:
        self._waiting.pop(waiter.seq, None)
        if waiter.key is not None and self._streams.get(waiter.key) is waiter:
            del self._streams[waiter.key]
        if not self._waiting:
            self._heap.clear()  # only calls that left are in it
            self._wake.set()  # the queue may stop (and hand its slots back) now
        elif len(self._heap) > 2 * len(self._waiting) + HEAP_SLACK:
            # Calls that left the queue are dropped from the heap lazily; withdrawn updates at
            # its bottom would stay as long as finals keep coming: rebuild it from those waiting.
            self._heap = [(w.rank, w) for w in self._waiting.values()]
            heapq.heapify(self._heap)

    def _next_waiter(self) -> _Waiter | None:
        while self._heap:
            _, waiter = heapq.heappop(self._heap)
            if waiter.seq in self._waiting and not waiter.future.done():
                return waiter
        return None

    # -- the queue --------------------------------------------------------------------------

    async def _run(self) -> None:
        """Serve waiting calls one per slot until none waits; reserve slots as they run out."""
        try:
            while self._waiting:
                now = time.monotonic()
                while self._slots and self._slots[0] < now - SLOT_GRACE_S:
                    self._slots.popleft()  # its time went by (the loop ran late): never saved up
                    self._unused(1)
                if not self._slots:
                    delay = await self._reserve()
                    if not self._slots and self._waiting:
                        await self._sleep(delay)
                elif self._slots[0] > now:
                    await self._sleep(self._slots[0] - now)
                else:
                    waiter = self._next_waiter()
                    if waiter is None:
                        break
                    self._slots.popleft()
                    self._grant(waiter, now)
                if not self._waiting and self._slots:
                    await self._release()
        except Exception as exc:  # a bug here must not leave calls waiting for ever
            log.exception("card_queue_failed", app=self.app, error=str(exc))
            self._fail(exc)
        finally:
            self._pump = None

    async def _sleep(self, delay_s: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, delay_s)):  # no task per sleep, unlike wait_for
                await self._wake.wait()

    def _grant(self, waiter: _Waiter, now: float) -> None:
        waited = now - waiter.enqueued
        CARD_CALL_WAIT_SECONDS.labels(waiter.cls.name.lower()).observe(waited)
        if waiter.cls is CallClass.STREAM:
            self._stream_lag.peak(waited, now)
        else:
            self._must_lag.peak(waited, now)
        self.granted += 1
        waiter.future.set_result(True)
        self._forget(waiter)
        self._update_mode(now)

    async def _reserve(self) -> float:
        """Ask the app's record for slots for the calls waiting; seconds to wait if none came."""
        want = max(1, min(len(self._waiting), math.ceil(self.rate * PACED_SHARE * HORIZON_S)))
        call = self._redis.eval(
            _RESERVE, 1, self._key, self.limit, want, PACED_SHARE, HORIZON_S * 1000, BUCKET_TTL_MS
        )
        self.round_trips += 1
        CARD_BUDGET_ROUND_TRIPS.inc()
        try:
            reply = await within(self._timeout_s, call)  # type: ignore[arg-type]
        except TimeoutError:
            # Redis is slow to answer: optional calls are skipped, the others wait and ask again
            # (the channel's lease ends the wait if Redis stays away).
            self._fail(None)
            return REDIS_RETRY_S * random.uniform(0.8, 1.2)
        except Exception as exc:
            self._fail(exc)
            return 0.0
        received = time.monotonic()
        rate, delay_ms, tat, interval_ms, *offsets = reply
        self.rate = float(rate)
        self._tat = tat.decode() if isinstance(tat, bytes) else str(tat)
        self._interval_ms = float(interval_ms)
        # Counted from when the answer came: a slot is used no earlier than the record meant.
        self._slots.extend(received + int(offset) / 1e6 for offset in offsets)
        return int(delay_ms) / 1000

    def _fail(self, exc: Exception | None) -> None:
        """Redis failed: optional calls are skipped; with `exc`, the others fail with it."""
        for waiter in list(self._waiting.values()):
            if waiter.future.done():
                continue
            if waiter.cls is CallClass.STREAM:
                waiter.future.set_result(False)
            elif exc is not None:
                waiter.future.set_exception(exc)
            else:
                continue
            self._forget(waiter)

    async def _release(self) -> None:
        """Hand unused future slots back, if no replica reserved after them."""
        now = time.monotonic()
        left = sum(1 for slot in self._slots if slot > now)
        self._unused(len(self._slots))
        self._slots.clear()
        if not left or not self._tat:
            return
        call = self._redis.eval(_RELEASE, 1, self._key, self._tat, left, self._interval_ms)
        self.round_trips += 1
        CARD_BUDGET_ROUND_TRIPS.inc()
        with contextlib.suppress(Exception):  # not handed back: they pass unused, soon
            await within(self._timeout_s, call)  # type: ignore[arg-type]

    def _drop_slots(self) -> None:
        self._unused(len(self._slots))
        self._slots.clear()
        self._tat = ""

    def _unused(self, count: int) -> None:
        if count:
            self.slots_unused += count
            CARD_SLOTS_UNUSED.inc(count)

    # -- degradation ------------------------------------------------------------------------

    def admit(self) -> bool:
        """An answer wants a card: False while the app's calls leave no room for one (one-call
        mode: the answer goes out in a single message). Counted either way: the arrival rate
        decides when cards come back."""
        now = time.monotonic()
        # Decided on the load before this answer.
        admitted = self._update_mode(now) is not CardMode.ONE_CALL or self._room_for_a_card(now)
        self._offered.add(1.0, now)
        if admitted:
            self._cards = max(0.0, self._cards - 1)
        return admitted

    def _room_for_a_card(self, now: float) -> bool:
        """In one-call mode: whether the cards given so far leave room for one more. Cards come
        from a bucket at their share of the rate; while no call waits, slots are passing unused
        and a card's open takes one at once (its final, later, goes before streaming updates)."""
        per_s = CARDS_IN_ONE_CALL * self.rate * PACED_SHARE / self.card_calls
        self._cards = min(per_s * CARD_BURST_S, self._cards + (now - self._cards_at) * per_s)
        self._cards_at = now
        # The calls that must happen are judged as they wait now, not by a recent peak: a card
        # refused for a past peak leaves its slots to nobody once the queue has drained.
        if self._oldest_wait(now, must=True) >= MUST_LAG_S / 2:
            return False
        if self._cards >= 1:
            return True
        # Idle here: slots pass unused, unless other replicas of the app spend them (then this
        # replica's own calls waited long lately). One more card, and the next idle one no
        # sooner than its calls' worth of slots (answers arriving together find it idle together).
        if self._waiting or now < self._spare_at or self._must_lag.read(now) >= MUST_LAG_S / 2:
            return False
        self._spare_at = now + self.card_calls / (self.rate * PACED_SHARE)
        return True

    @property
    def mode(self) -> CardMode:
        return self._update_mode(time.monotonic())

    def _update_mode(self, now: float) -> CardMode:
        capacity = self.rate * PACED_SHARE
        offered = self._offered.read(now) / LOAD_WINDOW_S  # answers/s
        must_lag = max(self._must_lag.read(now), self._oldest_wait(now, must=True))
        stream_lag = max(self._stream_lag.read(now), self._oldest_wait(now, must=False))
        needed = offered * self.card_calls
        if needed > ONE_CALL_ABOVE * capacity or must_lag > MUST_LAG_S:
            mode = CardMode.ONE_CALL
        elif self._mode is CardMode.ONE_CALL and (
            needed > CARDS_BACK_BELOW * capacity
            or must_lag > MUST_LAG_S / 4
            or now - self._mode_since < LOAD_WINDOW_S
        ):
            mode = CardMode.ONE_CALL  # hysteresis: back only once the load has clearly fallen
        elif stream_lag > STREAM_LAG_S or offered * (self.card_calls + 1) > capacity:
            mode = CardMode.THIN
        else:
            mode = CardMode.FULL
        if mode is not self._mode:
            self._set_mode(mode, now, offered=offered, must_lag=must_lag)
        return mode

    def _oldest_wait(self, now: float, *, must: bool) -> float:
        waits = [now - w.enqueued for w in self._waiting.values() if (w.cls is not CallClass.STREAM) == must]
        return max(waits, default=0.0)

    def _set_mode(self, mode: CardMode, now: float, **why: float) -> None:
        log.info(
            "card_mode_changed", app=self.app, mode=str(mode), was=str(self._mode), rate=self.rate, **why
        )
        if mode is CardMode.ONE_CALL:
            self._cards, self._cards_at = 0.0, now
        self._mode = mode
        self._mode_since = now
        CARD_MODE.labels(self.app).set(list(CardMode).index(mode))
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if mode is not CardMode.FULL:
            # Nothing may come to re-evaluate (no messages): look again once the window passed.
            self._recheck = asyncio.get_running_loop().call_later(LOAD_WINDOW_S, self._on_recheck)

    def _on_recheck(self) -> None:
        self._recheck = None
        if self._update_mode(time.monotonic()) is not CardMode.FULL and self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(LOAD_WINDOW_S, self._on_recheck)


class CardSchedulers:
    """One `CardCallScheduler` per app in the process, shared by every channel of the app."""

    def __init__(self) -> None:
        self._apps: dict[str, CardCallScheduler] = {}

    def get(
        self,
        redis: Redis,
        prefix: str,
        key: str,
        rate: float,
        *,
        call_timeout_s: float,
        card_calls: int,
    ) -> CardCallScheduler:
        scheduler = self._apps.get(key)
        if scheduler is None:
            scheduler = self._apps[key] = CardCallScheduler(
                redis, prefix, key, rate, call_timeout_s=call_timeout_s, card_calls=card_calls
            )
        elif scheduler.limit != max(0.1, rate):
            # A channel of the app started with another setting (edited since): the newest wins.
            log.info("card_rate_changed", app=key, rate=rate, was=scheduler.limit)
            scheduler.limit = scheduler.rate = max(0.1, rate)
        return scheduler
