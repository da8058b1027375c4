"""Turns one channel's reply events into what the user sees: a streaming card, or a plain reply.

A run's card (outTrackId = run id) is opened the moment its message is accepted, in parallel
with routing and the model's first token. Reply events then drive it: a queued line while the
message waits, the growing text (whole text each time, at most once per interval per card, when
the app's card-call scheduler has a slot for it: the card whose reader waited longest first),
and one final update that always happens. When the card cannot be made or finalized, the answer
goes out once as plain text (markdown) instead. While the app's card budget has no room for a
card's open and final calls, a new answer gets no card at all and goes out as one message.
Answers longer than a card holds continue in further cards.
"""

import asyncio
import contextlib
import contextvars
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from imgate_common import telemetry
from imgate_common.commands import parse_command
from imgate_common.consumers import REPLY_BACKOFF_S
from imgate_common.messages import (
    ConversationType,
    InboundMessage,
    MessageKind,
    Notice,
    ReplyEvent,
    ReplyTarget,
    RunCancelled,
    RunCompleted,
    RunDelta,
    RunFailed,
    RunQueued,
    RunStarted,
    run_id_for,
)
from imgate_connector.health import ChannelHealth
from imgate_connector.ledger import FinalsOrder, ReplyLedger, ReplyState
from imgate_connector.mending import CardMender, MendPolicy
from imgate_connector.metrics import (
    FALLBACKS,
    FINAL_SECONDS,
    FIRST_TEXT_SECONDS,
    ONE_CALL_ANSWERS,
    UNDELIVERABLE,
)
from imgate_connector.platforms.base import CardExists, CardNotFinalized, ReplySurface
from imgate_connector.wording import WORDINGS, Wording, split_long

log = structlog.get_logger()

# Finished runs remembered so a redelivered final event does not answer twice.
FINISHED_MEMORY = 10_000
# How often a final held back for a run the channel's last owner left unfinished looks again.
ORDER_POLL_S = 0.2
# How long a final waits for an earlier one of its conversation whose delivery failed and is
# being retried: its event comes again within the reply consumer's longest back-off.
RETRYING_FINAL_WAIT_S = max(REPLY_BACKOFF_S) + 30.0
# Kinds whose text a model answers (commands excepted): their card opens at once.
CARD_KINDS = frozenset({MessageKind.TEXT, MessageKind.RICH_TEXT, MessageKind.AUDIO, MessageKind.FILE})

# Session scope in which each member of a group has a conversation of their own (the router's).
SCOPE_USER = "user"

# Every event of one run so far (from the bus), to rebuild the text when deltas were missed.
RunHistory = Callable[[str], Awaitable[list[ReplyEvent]]]

# What a card shows: ("status", line) while waiting, ("text", answer so far) while streaming.
Display = tuple[str, str]
THINKING: Display = ("status", "")


def wants_card(message: InboundMessage) -> bool:
    """Will a model answer this? Commands and unsupported kinds get a plain notice instead."""
    text = message.text.strip()
    return message.kind in CARD_KINDS and bool(text) and parse_command(text) is None


def _within(span: Span) -> contextvars.Context:
    """A copy of the current context in which `span` is the current span (one per task)."""
    ctx = contextvars.copy_context()
    ctx.run(otel_context.attach, trace.set_span_in_context(span))
    return ctx


def _order_score(run: "RunCard") -> float:
    """Where the run stands in its conversation: when its message was sent (the platform's
    clock, the same for every replica), else when this replica first saw it."""
    sent = run.target.sent_at
    return sent.timestamp() if sent is not None else (run.arrived or run.tracked_at)


def conversation_key(target: ReplyTarget, scope: str) -> str:
    """The conversation a run answers in, as the router scopes it: its runs go one at a time,
    and their finals are shown in that order."""
    key = f"{target.platform}:{target.channel_id}:{target.conversation_id}"
    if scope == SCOPE_USER and target.conversation_type == ConversationType.GROUP:
        key = f"{key}:{target.sender_id}"
    return key


@dataclass(eq=False)
class RunCard:
    run_id: str
    target: ReplyTarget
    key: str = ""  # its conversation (`conversation_key`)
    attempt: int = 1
    text: str = ""  # the answer so far, of the current attempt
    seq: int = 0  # the last delta applied
    gap: bool = False  # deltas were missed: show nothing new until the final text
    queued: int | None = None  # position while the message waits behind another run
    shown: Display = THINKING
    card: asyncio.Task[bool] | None = None  # resolves to whether the card exists
    flusher: asyncio.Task[None] | None = None
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # the final update is next
    touched: float = field(default_factory=time.monotonic)
    # When the card last changed on screen (monotonic): its reader has waited since for more.
    changed: float = field(default_factory=time.monotonic)
    one_call: bool = False  # no card: the budget had no room for one; the answer is one message
    arrived: float | None = None  # when the message arrived (epoch seconds), if this replica saw it
    tracked_at: float = field(default_factory=time.time)  # when this replica first heard of it
    # The card's own span, current in its background tasks: the span that made the card (the
    # message's receipt, a reply event) ends long before the card does.
    span: Span | None = None
    # Set once the final answer is shown, or given up on, or will not come here: later runs of
    # the conversation may show theirs.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # Its final failed to show and its event comes again: later finals wait for it longer.
    retrying: bool = False

    async def has_card(self) -> bool:
        """Whether the card exists, once its opening is over. Shielded: whoever waits for it
        may be cancelled without cancelling the opening itself."""
        assert self.card is not None
        try:
            return await asyncio.shield(self.card)
        except asyncio.CancelledError:
            if self.card.cancelled():  # the opening was stopped (the channel moved): no card here
                return False
            raise


class CardRenderer:
    def __init__(
        self,
        surface: ReplySurface,
        health: ChannelHealth,
        update_interval_s: float,
        *,
        ledger: ReplyLedger | None = None,
        history: RunHistory | None = None,
        wording: Wording = WORDINGS["zh"],
        scope: str = "conversation",
        final_order_wait_s: float = 30.0,
        retrying_final_wait_s: float = RETRYING_FINAL_WAIT_S,
        mend: MendPolicy | None = None,
        order: FinalsOrder | None = None,
    ) -> None:
        self._surface = surface
        self._health = health
        self._interval = update_interval_s
        self._ledger = ledger
        self._history = history
        self._wording = wording
        self._scope = scope
        self._order_wait = final_order_wait_s
        self._retrying_wait = retrying_final_wait_s
        self._shared_order = order
        self.mender = CardMender(surface, health, mend or MendPolicy())
        self._runs: dict[str, RunCard] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        # Each conversation's unsettled runs, in the order their messages were sent (the
        # platform's clock), else in the order they were accepted or first seen here.
        self._order: dict[str, list[RunCard]] = {}
        self.finals_held = 0  # finals waiting for an earlier run's final right now

    # -- entry points ---------------------------------------------------------------------

    def accepted(self, message: InboundMessage) -> None:
        """The platform has its ACK: open the card now if a model will answer, never waiting."""
        if not wants_card(message):
            return
        run_id = run_id_for(message.platform, message.channel_id, message.message_id)
        if run_id in self._finished or run_id in self._runs:
            return  # a redelivery of a message we already show
        self._track(run_id, message.target).arrived = message.received_at.timestamp()

    async def handle(self, event: ReplyEvent) -> None:
        """Apply one event; returns once it is safe to acknowledge (finals: once delivered)."""
        if event.run_id in self._finished:
            log.info("reply_duplicate_ignored", run_id=event.run_id, kind=event.kind)
            return
        match event:
            case RunQueued():
                run = await self._known(event.run_id, event.target)
                if run is not None and event.attempt >= run.attempt and not run.text:
                    run.queued = event.position
                    run.dirty.set()
            case RunStarted():
                run = await self._known(event.run_id, event.target)
                if run is not None and self._follow_attempt(run, event.attempt):
                    run.queued = None
                    run.dirty.set()
            case RunDelta():
                run = await self._known(event.run_id, event.target)
                if run is not None and self._follow_attempt(run, event.attempt):
                    await self._apply_delta(run, event)
            case RunCompleted():
                await self._finish(event.run_id, event.target, event.text, failed=False)
            case RunFailed():
                text = f"{event.partial_text}\n\n{event.text}" if event.partial_text else event.text
                await self._finish(event.run_id, event.target, text, failed=True)
            case RunCancelled():
                stopped = self._wording.stopped
                text = f"{event.partial_text}\n\n{stopped}" if event.partial_text else stopped
                await self._finish(event.run_id, event.target, text, failed=False)
            case Notice():
                await self._notice(event)

    async def close(self) -> None:
        """Stop every background task (the channel moves or stops); cards stay as they are."""
        tasks: list[asyncio.Task[Any]] = []
        for run in self._runs.values():
            # Told to end as well as cancelled: a cancellation lost in a wait_for (Python 3.11)
            # must not leave a flusher waiting for text that never comes.
            run.closing.set()
            run.dirty.set()
            tasks += [t for t in (run.flusher, run.card) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        runs = list(self._runs.values())
        self._runs.clear()
        for run in runs:
            self._settle(run)
        await self.mender.close()

    def sweep(self, idle_s: float) -> int:
        """Forget runs no event touched for `idle_s` (their card stays as it is)."""
        cutoff = time.monotonic() - idle_s
        stale = [r for r in self._runs.values() if r.touched < cutoff]
        for run in stale:
            for task in (run.flusher, run.card):
                if task is not None:
                    task.cancel()
            self._runs.pop(run.run_id, None)
            self._settle(run)
        return len(stale)

    @property
    def active_runs(self) -> int:
        return len(self._runs)

    # -- runs and their cards -------------------------------------------------------------

    def _track(self, run_id: str, target: ReplyTarget, *, adopt: bool = False) -> RunCard:
        run = self._runs[run_id] = RunCard(run_id, target, conversation_key(target, self._scope))
        self._enqueue(run)
        # The card's tasks outlive whatever span is current here: they get a span of their own.
        run.span = telemetry.tracer().start_span("card", attributes={telemetry.RUN_ID: run_id})
        opening = self._registered(run, self._adopt() if adopt else self._open(run))
        run.card = asyncio.create_task(opening, name=f"card-{run_id}", context=_within(run.span))
        run.flusher = asyncio.create_task(
            self._flush_loop(run), name=f"flush-{run_id}", context=_within(run.span)
        )
        return run

    async def _known(self, run_id: str, target: ReplyTarget) -> RunCard | None:
        """The run's card state; a run first seen here (its channel changed owner, or the card
        was not opened at accept time) is looked up in the ledger. None: already answered."""
        run = self._runs.get(run_id)
        if run is not None:
            run.touched = time.monotonic()
            return run
        state = await self._ledger.get(run_id) if self._ledger else None
        if state == ReplyState.DONE:
            self._remember(run_id)
            return None
        run = self._runs.get(run_id)  # opened meanwhile by `accepted`
        if run is None:
            run = self._track(run_id, target, adopt=state == ReplyState.CARD)
        return run

    async def _registered(self, run: RunCard, opening: Awaitable[bool]) -> bool:
        """Open (or adopt) the card once the run is in its conversation's shared order."""
        if self._shared_order is not None:
            await self._shared_order.add(run.key, run.run_id, _order_score(run))
        return await opening

    @staticmethod
    async def _adopt() -> bool:
        return True

    async def _open(self, run: RunCard) -> bool:
        """Create the card; True when it exists (made now or earlier by any replica)."""
        state = await self._ledger.get(run.run_id) if self._ledger else None
        if state == ReplyState.CARD:
            return True
        if state in (ReplyState.PLAIN, ReplyState.DONE):
            return False
        if not self._surface.card_admitted():
            # The app's card calls are saturated: this answer goes out in one message.
            run.one_call = True
            await self._mark(run.run_id, ReplyState.PLAIN)
            return False
        await self._mark(run.run_id, ReplyState.OPENING)
        try:
            await self._surface.open_card(run.run_id, run.target)
        except CardExists:
            log.info("card_already_open", run_id=run.run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._platform_error(exc, "card_open_failed", run.run_id)
            await self._mark(run.run_id, ReplyState.PLAIN)
            return False
        self.mender.platform_back()
        run.changed = time.monotonic()
        await self._mark(run.run_id, ReplyState.CARD)
        return True

    async def _mark(self, run_id: str, state: ReplyState) -> None:
        if self._ledger is not None:
            await self._ledger.set(run_id, state)

    @staticmethod
    def _follow_attempt(run: RunCard, attempt: int) -> bool:
        """A runner that died mid-answer is replaced by a redo that writes the answer again:
        start the text over for a newer attempt; False for events of an older one."""
        if attempt > run.attempt:
            run.attempt, run.text, run.seq, run.gap = attempt, "", 0, False
        return attempt == run.attempt

    async def _apply_delta(self, run: RunCard, event: RunDelta) -> None:
        if event.seq and event.seq <= run.seq:
            return  # a redelivered delta
        if run.gap:
            return
        if event.length == len(run.text) + len(event.text):
            run.text += event.text
        elif event.length != len(run.text):  # not a repeat of the last one: something is missing
            text = await self._rebuild(run, event)
            if text is None:
                log.warning("reply_gap", run_id=run.run_id, have=len(run.text), want=event.length)
                run.gap = True
                return
            run.text = text
        run.seq = event.seq
        run.dirty.set()

    async def _rebuild(self, run: RunCard, event: RunDelta) -> str | None:
        """The answer up to `event`, from every delta of this attempt the bus still holds."""
        if self._history is None:
            return None
        try:
            events = await self._history(run.run_id)
        except Exception as exc:
            log.warning("reply_history_unavailable", run_id=run.run_id, error=str(exc))
            return None
        chunks: dict[int, str] = {}
        for past in events:
            if isinstance(past, RunDelta) and past.attempt == event.attempt and past.seq < event.seq:
                chunks[past.seq] = past.text
        text = "".join(chunks[s] for s in sorted(chunks)) + event.text
        return text if len(text) == event.length else None

    def _display(self, run: RunCard) -> Display:
        if run.text and not run.gap:
            limit = self._surface.max_card_chars
            if len(run.text) <= limit:
                return ("text", run.text)
            return ("text", f"{split_long(run.text, limit)[0]}\n\n…")  # the rest follows at the end
        if run.queued is not None:
            return ("status", self._wording.queued.format(position=run.queued))
        return run.shown if run.shown[0] == "text" else THINKING

    async def _flush_loop(self, run: RunCard) -> None:
        """Show the newest text at most once per interval, however fast deltas arrive; an update
        the budget does not allow now is retried after the interval. Ends (never cancelled
        mid-call, so no stale update can land after the final one) once `closing` is set."""
        if not await run.has_card():
            return
        last = 0.0
        while not run.closing.is_set():
            await run.dirty.wait()
            wait = last + self._interval - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.closing.wait(), wait)
            if run.closing.is_set():
                return
            run.dirty.clear()
            display = self._display(run)
            if display == run.shown:
                continue
            kind, text = display
            sent = [display]  # what the update shows: the newest text once its turn came
            try:
                if kind == "text":
                    newest = functools.partial(self._newest_text, run, sent)
                    shown = await self._surface.update_card(run.run_id, newest, since=run.changed)
                    display = sent[0]
                else:
                    shown = await self._surface.show_status(run.run_id, text, since=run.changed)
            except Exception as exc:
                self._platform_error(exc, "card_update_failed", run.run_id)
                shown = False
            last = time.monotonic()
            if shown:
                self.mender.platform_back()
                run.changed = last
                if kind == "text" and run.shown[0] != "text":
                    self._first_text_shown(run)
                run.shown = display
            else:
                run.dirty.set()

    def _newest_text(self, run: RunCard, sent: list[Display]) -> str:
        """The run's text as it is now (an update may wait for its turn while the answer grows);
        `sent` keeps what was read."""
        now = self._display(run)
        if now[0] == "text":
            sent[0] = now
        return sent[0][1]

    @staticmethod
    def _first_text_shown(run: RunCard) -> None:
        if run.span is not None:
            run.span.add_event("first_text_shown")
        if run.arrived is not None:
            FIRST_TEXT_SECONDS.labels(run.target.platform).observe(max(0.0, time.time() - run.arrived))

    # -- final answers --------------------------------------------------------------------

    async def _finish(self, run_id: str, target: ReplyTarget, text: str, *, failed: bool) -> None:
        run = await self._known(run_id, target)
        if run is None:
            return
        await self._wait_turn(run)
        try:
            await self._deliver_final(run, text, failed=failed)
        except BaseException:
            # Not shown this time: the event comes again (or is given up on, which settles the
            # run). Later finals of the conversation keep waiting for it, so that when the
            # platform is back after an outage the answers still show in order. Its place in
            # the shared order stays too: stopped mid-delivery (the channel moves), the event
            # goes to the channel's next owner, whose later finals must wait for it as well.
            run.retrying = True
            raise
        self._settle(run)
        await self._drop_shared(run.key, run.run_id)

    async def _wait_turn(self, run: RunCard) -> None:
        """Finals of one conversation are shown in the order of their messages: wait until
        every earlier run, here or left unfinished by the channel's last owner, has shown its
        final (or failed to). An earlier run whose final does not come within the bound stops
        holding anyone up."""
        queue = self._order.get(run.key, [])
        if run not in queue:
            return  # its turn came before (its earlier runs went on without it)
        deadline = time.monotonic() + self._order_wait
        await self._wait_for_earlier_here(run, queue)
        await self._wait_for_earlier_elsewhere(run, deadline)

    async def _wait_for_earlier_here(self, run: RunCard, queue: list[RunCard]) -> None:
        earlier = [other for other in queue[: queue.index(run)] if not other.settled.is_set()]
        if not earlier:
            return
        log.info("final_waits_for_earlier", run_id=run.run_id, earlier=[other.run_id for other in earlier])
        self.finals_held += 1
        # An earlier final being retried comes again within the reply consumer's longest
        # back-off: wait that long for it. Any other earlier run is waited for a shorter while.
        bound = self._retrying_wait if any(other.retrying for other in earlier) else self._order_wait
        try:
            waits = [asyncio.create_task(other.settled.wait()) for other in earlier]
            try:
                await asyncio.wait(waits, timeout=bound)
            finally:
                for wait in waits:
                    wait.cancel()
        finally:
            self.finals_held -= 1
        for other in earlier:
            if not other.settled.is_set():
                log.warning("final_order_wait_expired", run_id=run.run_id, earlier_run_id=other.run_id)
                if not other.retrying:  # one being retried still goes first if it comes first
                    self._unorder(other)
                    await self._drop_shared(other.key, other.run_id)

    async def _wait_for_earlier_elsewhere(self, run: RunCard, deadline: float) -> None:
        """Earlier runs this replica does not know: tracked by the channel's last owner, whose
        events come here once their ack wait is over. Their finals go first."""
        if self._shared_order is None:
            return
        unknown = await self._unknown_earlier(run)
        if not unknown:
            return
        log.info("final_waits_for_earlier_elsewhere", run_id=run.run_id, earlier=unknown)
        self.finals_held += 1
        try:
            while unknown and time.monotonic() < deadline:
                await asyncio.sleep(ORDER_POLL_S)
                unknown = await self._unknown_earlier(run)
        finally:
            self.finals_held -= 1
        for other in unknown:
            log.warning("final_order_wait_expired", run_id=run.run_id, earlier_run_id=other)
            await self._drop_shared(run.key, other)

    async def _unknown_earlier(self, run: RunCard) -> list[str]:
        """Earlier unshown runs of the conversation that this replica has not settled. One that
        is known here now is waited for by the local order, once its final comes."""
        assert self._shared_order is not None
        unknown = []
        for other in await self._shared_order.earlier(run.key, run.run_id, _order_score(run)):
            known = self._runs.get(other)
            if other in self._finished or (known is not None and known.settled.is_set()):
                continue
            if known is None and await self._shown_elsewhere(other):
                await self._drop_shared(run.key, other)  # its owner stopped before it said so
                continue
            unknown.append(other)
        return unknown

    async def _shown_elsewhere(self, run_id: str) -> bool:
        return self._ledger is not None and await self._ledger.get(run_id) == ReplyState.DONE

    async def _drop_shared(self, conversation: str, run_id: str) -> None:
        if self._shared_order is not None:
            await self._shared_order.remove(conversation, run_id)

    def _enqueue(self, run: RunCard) -> None:
        """Place the run among its conversation's unsettled runs by when its message was sent
        (a channel's new owner first sees runs in the order their events come, not their
        messages); a run whose sending time is unknown goes last."""
        queue = self._order.setdefault(run.key, [])
        at = run.target.sent_at
        index = len(queue)
        while at is not None and index > 0:
            before = queue[index - 1].target.sent_at
            if before is None or before <= at:
                break
            index -= 1
        queue.insert(index, run)

    def _unorder(self, run: RunCard) -> None:
        """Later runs of the conversation no longer wait for this one."""
        run.settled.set()
        queue = self._order.get(run.key)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(run)
            if not queue:
                del self._order[run.key]

    def _settle(self, run: RunCard) -> None:
        self._unorder(run)
        if run.span is not None and run.run_id not in self._runs:
            run.span.end()
            run.span = None

    async def _deliver_final(self, run: RunCard, text: str, *, failed: bool) -> None:
        run_id = run.run_id
        run.closing.set()
        run.dirty.set()
        self._surface.withdraw(run_id)  # an update still waiting for its turn: the final is next
        if run.flusher is not None:
            await asyncio.wait([run.flusher])  # its update in flight lands before the final one
        card = await run.has_card()
        parts = split_long(text.strip() or "…", self._surface.max_card_chars)
        sent = 0
        if card:
            sent = await self._finish_cards(run, parts, failed=failed)
        if run.one_call:
            ONE_CALL_ANSWERS.labels(run.target.platform).inc()
            trace.get_current_span().add_event("answered_in_one_message", {"parts": len(parts)})
        elif sent < len(parts):
            # The card could not show (all of) the answer: plain text, once, for what is missing.
            self._health.fallback_replies += 1
            FALLBACKS.labels(run.target.platform).inc()
            trace.get_current_span().add_event("fallback_to_plain_reply", {"parts": len(parts) - sent})
        if sent < len(parts):
            for part in self._marked(parts)[sent:]:
                await self._surface.send_text(run.target, part, markdown=True)
            if card and sent == 0:
                # The card still says "thinking…" or shows half the answer beside the plain one:
                # it ends, once the platform lets us, pointing to the answer.
                self.mender.close_later(run_id, run.target.platform, self._wording.sent_below)
        await self._mark(run_id, ReplyState.DONE)
        self._runs.pop(run_id, None)
        self._remember(run_id)
        self._health.replies_out += 1
        if run.arrived is not None:
            FINAL_SECONDS.labels(run.target.platform).observe(max(0.0, time.time() - run.arrived))

    def _marked(self, parts: list[str]) -> list[str]:
        """Every part but the last says the answer goes on."""
        more = f"\n\n{self._wording.continued}"
        return [part if i == len(parts) - 1 else part + more for i, part in enumerate(parts)]

    async def _finish_cards(self, run: RunCard, parts: list[str], *, failed: bool) -> int:
        """Finalize the card and post the continuations; returns how many parts are shown."""
        marked = self._marked(parts)
        try:
            await self._surface.close_card(run.run_id, marked[0], failed=failed and len(parts) == 1)
        except Exception as exc:
            self._platform_error(exc, "card_close_failed", run.run_id)
            return 0
        self.mender.platform_back()
        for index, part in enumerate(marked[1:], start=2):
            card_id = f"{run.run_id}-{index}"
            try:
                await self._surface.post_card(card_id, run.target, part)
            except CardNotFinalized as exc:
                self._platform_error(exc, "card_post_not_finalized", run.run_id)
                self.mender.close_later(card_id, run.target.platform, part)
            except Exception as exc:
                self._platform_error(exc, "card_post_failed", run.run_id)
                return index - 1
        return len(parts)

    async def undeliverable(self, event: ReplyEvent, reason: str) -> None:
        """The final answer could not be delivered however long it was tried: count it, show
        it on the channel, and end its card failed with a sentence once the platform lets us.
        Nothing marks the run answered, so a replay of the event (the dead letter) still can."""
        UNDELIVERABLE.labels(event.target.platform).inc()
        self._health.error(f"answer undeliverable: {reason}")
        log.error("reply_undeliverable", run_id=event.run_id, reason=reason)
        run = self._runs.pop(event.run_id, None)
        if run is not None and run.flusher is not None:
            run.flusher.cancel()
        if run is not None and run.card is not None and run.card.done():
            card = not run.card.cancelled() and run.card.exception() is None and run.card.result()
        else:
            card = self._ledger is not None and await self._ledger.get(event.run_id) == ReplyState.CARD
        if card:
            # Once now, before later runs of the conversation may show theirs: the event may
            # have been the trouble, not the platform. Else later, when the platform lets us.
            try:
                await self._surface.close_card(event.run_id, self._wording.undelivered, failed=True)
                card = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._platform_error(exc, "card_close_failed", event.run_id)
        if run is not None:
            self._settle(run)
        await self._drop_shared(conversation_key(event.target, self._scope), event.run_id)
        if card:
            self.mender.close_later(
                event.run_id, event.target.platform, self._wording.undelivered, failed=True
            )

    async def _notice(self, event: Notice) -> None:
        """A plain answer (command, unsupported message, error). If the message's card is open
        already, the notice becomes that card's final text: one visible answer, not two."""
        run = self._runs.get(event.run_id)
        state = None
        if run is None and self._ledger is not None:
            state = await self._ledger.get(event.run_id)
            if state == ReplyState.DONE:
                self._remember(event.run_id)
                return
        if run is not None or state in (ReplyState.CARD, ReplyState.OPENING):
            await self._finish(event.run_id, event.target, event.text, failed=False)
            return
        await self._surface.send_text(event.target, event.text)
        await self._mark(event.run_id, ReplyState.DONE)
        self._remember(event.run_id)
        self._health.replies_out += 1

    def _remember(self, run_id: str) -> None:
        self._finished[run_id] = None
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def _platform_error(self, exc: Exception, event: str, run_id: str) -> None:
        # Throttling is counted by the surface, once per refused call.
        self._health.error(f"{event}: {exc}")
        log.warning(event, run_id=run_id, error=str(exc))
