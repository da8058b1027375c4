"""CardRenderer: reply events → card calls, coalesced, finalized once, with plain-text fallback."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from imgate_common.errors import FailureCategory, PlatformError, RateLimited
from imgate_common.messages import (
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
    Sender,
    run_id_for,
)
from imgate_connector.health import ChannelHealth
from imgate_connector.ledger import FinalsOrder, ReplyState
from imgate_connector.mending import MendPolicy
from imgate_connector.platforms.base import CardExists, CardNotFinalized, CardText, ReplySurface
from imgate_connector.rendering import ORDER_POLL_S, CardRenderer
from imgate_connector.wording import WORDINGS
from tests.connector.sim import until
from tests.support.factories import reply_target

TARGET = reply_target()


@dataclass
class RecordingSurface(ReplySurface):
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    fail_open: Exception | None = None
    fail_close: Exception | None = None
    fail_post: Exception | None = None
    budget_left: int | None = None  # optional updates allowed; None: unlimited
    open_delay_s: float = 0.0
    max_card_chars: int = 5000

    async def open_card(self, card_id: str, target: ReplyTarget) -> None:
        await asyncio.sleep(self.open_delay_s)
        if self.fail_open:
            raise self.fail_open
        self.calls.append(("open", card_id, ""))

    def _spend(self) -> bool:
        if self.budget_left is None:
            return True
        if self.budget_left <= 0:
            return False
        self.budget_left -= 1
        return True

    async def show_status(self, card_id: str, text: str, *, since: float | None = None) -> bool:
        if not self._spend():
            return False
        self.calls.append(("status", card_id, text))
        return True

    async def update_card(self, card_id: str, text: CardText, *, since: float | None = None) -> bool:
        if not self._spend():
            return False
        self.calls.append(("update", card_id, text() if callable(text) else text))
        return True

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        if self.fail_close:
            raise self.fail_close
        self.calls.append(("close-failed" if failed else "close", card_id, text))

    async def post_card(self, card_id: str, target: ReplyTarget, text: str) -> None:
        if self.fail_post:
            raise self.fail_post
        self.calls.append(("post", card_id, text))

    async def send_text(self, target: ReplyTarget, text: str, *, markdown: bool = False) -> None:
        self.calls.append(("markdown" if markdown else "text", target.conversation_id, text))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


class MemoryLedger:
    """The Redis ledger's contract, in memory (a second renderer = the channel's next owner)."""

    def __init__(self) -> None:
        self.states: dict[str, ReplyState] = {}

    async def get(self, run_id: str) -> ReplyState | None:
        return self.states.get(run_id)

    async def set(self, run_id: str, state: ReplyState) -> None:
        self.states[run_id] = state


def renderer(
    surface: RecordingSurface, interval: float = 0.05, **kwargs: object
) -> tuple[CardRenderer, ChannelHealth]:
    health = ChannelHealth(channel_id=1, owner="test")
    return CardRenderer(surface, health, interval, **kwargs), health  # type: ignore[arg-type]


def delta(seq: int, text: str, length: int, run: str = "r1", attempt: int = 1) -> RunDelta:
    return RunDelta(
        run_id=run, channel_id=1, seq=seq, target=TARGET, text=text, length=length, attempt=attempt
    )


def done(text: str, run: str = "r1", seq: int = 99, attempt: int = 1) -> RunCompleted:
    return RunCompleted(run_id=run, channel_id=1, seq=seq, target=TARGET, text=text, attempt=attempt)


def inbound(text: str, kind: MessageKind = MessageKind.TEXT, message_id: str = "m1") -> InboundMessage:
    return InboundMessage(
        platform="dingtalk",
        channel_id=1,
        message_id=message_id,
        kind=kind,
        text=text,
        platform_type="text",
        sender=Sender(id="u1"),
        target=TARGET,
    )


async def feed(cards: CardRenderer, *events: ReplyEvent) -> None:
    for event in events:
        await cards.handle(event)


async def test_fast_deltas_are_coalesced_and_the_card_ends_with_the_full_text() -> None:
    surface = RecordingSurface()
    cards, health = renderer(surface, interval=0.2)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    text = ""
    for i in range(50):
        text += f"w{i} "
        await cards.handle(delta(i + 2, f"w{i} ", len(text)))
    await asyncio.sleep(0.05)
    await cards.handle(done(text.strip()))
    kinds = surface.kinds()
    assert kinds[0] == "open" and kinds[-1] == "close"
    assert 1 <= kinds.count("update") < 5, "50 deltas in a burst must not become 50 card updates"
    assert surface.calls[-1][2] == text.strip()
    assert health.replies_out == 1


async def test_updates_show_growing_text_in_order() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(delta(2, "Hello", 5))
    await asyncio.sleep(0.05)
    await cards.handle(delta(3, " world", 11))
    await asyncio.sleep(0.05)
    await cards.handle(done("Hello world"))
    updates = [c[2] for c in surface.calls if c[0] == "update"]
    assert updates == ["Hello", "Hello world"]


async def test_the_card_opens_when_the_message_is_accepted_and_started_reuses_it() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    message = inbound("What can you do?")
    run_id = run_id_for("dingtalk", 1, "m1")
    cards.accepted(message)
    cards.accepted(message)  # the platform redelivered it: still one card
    await asyncio.sleep(0.01)
    assert surface.calls == [("open", run_id, "")], "the card is out before any reply event"
    await feed(
        cards,
        RunStarted(run_id=run_id, channel_id=1, target=TARGET),
        delta(2, "Hi", 2, run=run_id),
        done("Hi there", run=run_id),
    )
    assert surface.kinds().count("open") == 1
    assert surface.calls[-1] == ("close", run_id, "Hi there")


async def test_commands_and_unsupported_kinds_get_no_early_card() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    cards.accepted(inbound("/new", message_id="a"))
    cards.accepted(inbound("", kind=MessageKind.IMAGE, message_id="b"))
    cards.accepted(inbound("", kind=MessageKind.VIDEO, message_id="c"))
    await asyncio.sleep(0.01)
    assert surface.calls == []


async def test_events_wait_for_a_slow_card_open() -> None:
    surface = RecordingSurface(open_delay_s=0.1)
    cards, _ = renderer(surface, interval=0.01)
    run_id = run_id_for("dingtalk", 1, "m1")
    cards.accepted(inbound("hello"))
    await feed(cards, delta(2, "Hi", 2, run=run_id), done("Hi", run=run_id))
    assert surface.kinds() == ["open", "close"]


async def test_queued_line_then_the_answer() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(RunQueued(run_id="r1", channel_id=1, target=TARGET, position=2))
    await asyncio.sleep(0.05)
    assert surface.calls[-1] == ("status", "r1", WORDINGS["zh"].queued.format(position=2))
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await asyncio.sleep(0.05)
    assert surface.calls[-1] == ("status", "r1", ""), "started clears the queued line"
    await feed(cards, delta(2, "Go", 2))
    await asyncio.sleep(0.05)
    await cards.handle(done("Go on"))
    assert surface.kinds() == ["open", "status", "status", "update", "close"]


async def test_a_redelivered_final_event_does_not_answer_twice() -> None:
    surface = RecordingSurface()
    cards, health = renderer(surface)
    await feed(cards, done("once"), done("once"))
    assert surface.kinds() == ["open", "close"]
    assert health.replies_out == 1


async def test_completed_without_started_still_shows_the_answer() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    await cards.handle(done("late", run="r9"))
    assert surface.calls == [("open", "r9", ""), ("close", "r9", "late")]


async def test_updates_skipped_by_the_budget_are_coalesced_and_the_final_still_happens() -> None:
    surface = RecordingSurface(budget_left=1)
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    text = ""
    for i in range(10):
        text += "x"
        await cards.handle(delta(i + 2, "x", len(text)))
        await asyncio.sleep(0.02)
    await cards.handle(done(text))
    assert surface.kinds().count("update") == 1
    assert surface.calls[-1] == ("close", "r1", text)


async def test_card_failure_falls_back_to_one_markdown_reply() -> None:
    surface = RecordingSurface(fail_open=RateLimited("QpsLimit", 403, "QpsLimit.Card"))
    cards, health = renderer(surface)
    await feed(cards, RunStarted(run_id="r1", channel_id=1, target=TARGET), delta(2, "partial", 7))
    await cards.handle(done("final"))
    assert surface.calls == [("markdown", "cid", "final")]
    assert health.fallback_replies == 1
    assert health.last_error and "QpsLimit" in health.last_error


async def test_close_failure_falls_back_to_plain_reply() -> None:
    surface = RecordingSurface(fail_close=PlatformError("boom", 500))
    cards, _ = renderer(surface)
    await cards.handle(done("answer"))
    assert surface.calls[-1] == ("markdown", "cid", "answer")
    assert surface.kinds().count("markdown") == 1


async def test_failure_shows_partial_text_and_the_user_sentence() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    await cards.handle(
        RunFailed(
            run_id="r1",
            channel_id=1,
            target=TARGET,
            category=FailureCategory.TIMED_OUT,
            text="took too long",
            partial_text="Half an",
        )
    )
    assert surface.calls[-1] == ("close-failed", "r1", "Half an\n\ntook too long")


async def test_cancelled_keeps_the_partial_text() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    await cards.handle(RunCancelled(run_id="r1", channel_id=1, target=TARGET, partial_text="So far"))
    assert surface.calls[-1] == ("close", "r1", "So far\n\n（已停止）")  # the channel speaks zh


async def test_notice_is_a_plain_reply() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    await cards.handle(Notice(run_id="n1", channel_id=1, target=TARGET, text="已开始新对话"))
    assert surface.calls == [("text", "cid", "已开始新对话")]


async def test_a_notice_for_a_message_whose_card_is_open_becomes_that_cards_answer() -> None:
    surface = RecordingSurface()
    cards, health = renderer(surface)
    run_id = run_id_for("dingtalk", 1, "m1")
    cards.accepted(inbound("hello"))
    await cards.handle(Notice(run_id=run_id, channel_id=1, target=TARGET, text="No agent here."))
    assert surface.calls == [("open", run_id, ""), ("close", run_id, "No agent here.")]
    assert health.replies_out == 1


async def test_a_redone_run_starts_the_card_text_over_and_ignores_the_dead_attempt() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(delta(2, "Half of the fir", 15))
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET, attempt=2))
    await cards.handle(delta(2, "Second", 6, attempt=2))
    await cards.handle(delta(3, "st try", 21))  # late, from the dead attempt
    await asyncio.sleep(0.05)
    await cards.handle(done("Second try", attempt=2))
    assert surface.kinds().count("open") == 1
    assert "Half of the first try" not in [c[2] for c in surface.calls]
    assert surface.calls[-1] == ("close", "r1", "Second try")


async def test_missed_deltas_are_rebuilt_from_the_runs_history() -> None:
    history = [
        RunStarted(run_id="r1", channel_id=1, seq=1, target=TARGET),
        delta(2, "One ", 4),
        delta(3, "two ", 8),
    ]

    async def read(run_id: str) -> list[ReplyEvent]:
        return list(history)

    surface = RecordingSurface()
    cards, _ = renderer(surface, interval=0.01, history=read)
    await cards.handle(delta(4, "three", 13))  # the new owner's first event
    await asyncio.sleep(0.05)
    assert ("update", "r1", "One two three") in surface.calls


async def test_without_history_a_gap_waits_for_the_final_text() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(delta(4, "three", 13))
    await asyncio.sleep(0.05)
    assert "update" not in surface.kinds(), "never show a text with a hole in it"
    await cards.handle(done("One two three"))
    assert surface.calls[-1] == ("close", "r1", "One two three")


async def test_long_answers_continue_in_further_cards() -> None:
    surface = RecordingSurface(max_card_chars=100)
    cards, _ = renderer(surface, interval=0.01)
    paragraphs = [f"Paragraph {i}: " + "word " * 12 for i in range(6)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(delta(2, text, len(text)))
    await asyncio.sleep(0.05)
    await cards.handle(done(text))
    updates = [c[2] for c in surface.calls if c[0] == "update"]
    assert updates and all(len(u) <= 110 for u in updates)
    close = next(c for c in surface.calls if c[0] == "close")
    posts = [c for c in surface.calls if c[0] == "post"]
    assert posts and [p[1] for p in posts] == [f"r1-{i}" for i in range(2, len(posts) + 2)]
    shown = [close[2], *(p[2] for p in posts)]
    marker = WORDINGS["zh"].continued
    assert all(s.endswith(marker) for s in shown[:-1]) and not shown[-1].endswith(marker)
    assert " ".join(s.replace(marker, "") for s in shown).split() == text.split(), "nothing lost"


async def test_continuation_that_cannot_be_posted_goes_out_as_text_once() -> None:
    surface = RecordingSurface(max_card_chars=50, fail_post=PlatformError("down", 503))
    cards, _ = renderer(surface)
    text = "First part of a long answer.\n\nSecond part of a long answer."
    await cards.handle(done(text))
    assert surface.kinds() == ["open", "close", "markdown"]
    assert surface.calls[-1][2] == "Second part of a long answer."


async def test_the_next_owner_continues_the_card_and_never_answers_twice() -> None:
    ledger = MemoryLedger()
    first = RecordingSurface()
    old, _ = renderer(first, interval=0.01, ledger=ledger)
    old.accepted(inbound("hello"))
    run_id = run_id_for("dingtalk", 1, "m1")
    await old.handle(RunStarted(run_id=run_id, channel_id=1, target=TARGET))
    await asyncio.sleep(0.02)
    await old.close()  # the channel moved
    assert ledger.states[run_id] == ReplyState.CARD

    second = RecordingSurface()
    new, _ = renderer(second, interval=0.01, ledger=ledger)
    new.accepted(inbound("hello"))  # DingTalk redelivered the message to the new owner
    await new.handle(delta(2, "Hi", 2, run=run_id))
    await asyncio.sleep(0.03)
    await new.handle(done("Hi!", run=run_id))
    assert "open" not in second.kinds(), "the card exists: adopt it"
    assert second.calls[-1] == ("close", run_id, "Hi!")
    assert ledger.states[run_id] == ReplyState.DONE

    third = RecordingSurface()
    late, _ = renderer(third, ledger=ledger)
    await late.handle(done("Hi!", run=run_id))  # the final event redelivered once more
    assert third.calls == []


async def test_a_card_found_existing_on_open_is_adopted() -> None:
    surface = RecordingSurface(fail_open=CardExists("dup", 400, "param.outTrackId.duplicate"))
    cards, health = renderer(surface)
    await cards.handle(done("answer"))
    assert surface.calls == [("close", "r1", "answer")]
    assert health.fallback_replies == 0


async def test_a_handler_cancelled_while_the_card_opens_does_not_cancel_the_opening() -> None:
    surface = RecordingSurface(open_delay_s=0.1)
    cards, _ = renderer(surface)
    cards.accepted(inbound("hello"))
    run_id = run_id_for("dingtalk", 1, "m1")
    waiting = asyncio.create_task(cards.handle(done("Hi", run=run_id)))
    await asyncio.sleep(0.02)
    waiting.cancel()  # the channel's consumer stopped mid-event
    await asyncio.gather(waiting, return_exceptions=True)
    await cards.handle(done("Hi", run=run_id))  # the event, redelivered
    assert surface.calls == [("open", run_id, ""), ("close", run_id, "Hi")]


async def test_no_streaming_update_lands_after_the_final_one() -> None:
    class SlowUpdates(RecordingSurface):
        async def update_card(self, card_id: str, text: CardText, *, since: float | None = None) -> bool:
            await asyncio.sleep(0.1)
            return await super().update_card(card_id, text)

    surface = SlowUpdates()
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(delta(2, "Partial", 7))
    await asyncio.sleep(0.05)  # the update is in flight now
    await cards.handle(done("Partial and final"))
    await asyncio.sleep(0.15)
    assert surface.kinds() == ["open", "update", "close"]


class HeldCloses(RecordingSurface):
    """Closing a card waits while its run is held (its final waits for the card budget)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, asyncio.Event] = {}
        self.closing: list[str] = []

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        self.closing.append(card_id)
        if card_id in self.held:
            await self.held[card_id].wait()
        await super().close_card(card_id, text, failed=failed)


async def until_true(check: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return check()

    await until(holds, within=5)


async def test_a_later_runs_final_waits_for_the_earlier_runs_final_in_its_conversation() -> None:
    surface = HeldCloses()
    cards, _ = renderer(surface)
    first, second = run_id_for("dingtalk", 1, "m1"), run_id_for("dingtalk", 1, "m2")
    cards.accepted(inbound("first", message_id="m1"))
    cards.accepted(inbound("second", message_id="m2"))
    surface.held[first] = asyncio.Event()
    earlier = asyncio.create_task(cards.handle(done("one", run=first)))
    await until_true(lambda: first in surface.closing)
    later = asyncio.create_task(cards.handle(done("two", run=second)))
    # Either the later final went out past the held one, or it waits for it.
    await until_true(lambda: later.done() or getattr(cards, "finals_held", 0) == 1)
    surface.held[first].set()
    await asyncio.gather(earlier, later)
    closes = [(c[1], c[2]) for c in surface.calls if c[0] == "close"]
    assert closes == [(first, "one"), (second, "two")]


async def test_a_final_waits_for_an_earlier_run_that_never_answers_only_so_long() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface, final_order_wait_s=0.05)
    lost, first, second = (run_id_for("dingtalk", 1, m) for m in ("m0", "m1", "m2"))
    for message_id in ("m0", "m1", "m2"):
        cards.accepted(inbound("hello", message_id=message_id))
    await cards.handle(done("one", run=first))
    assert cards.finals_held == 0
    await cards.handle(done("two", run=second))  # the lost run holds nobody up any more
    closes = [c[1] for c in surface.calls if c[0] == "close"]
    assert closes == [first, second] and lost not in closes


async def test_finals_of_different_conversations_do_not_wait_for_each_other() -> None:
    surface = HeldCloses()
    cards, _ = renderer(surface)
    first = run_id_for("dingtalk", 1, "m1")
    cards.accepted(inbound("first", message_id="m1"))
    other = TARGET.model_copy(update={"conversation_id": "another"})
    message = inbound("second", message_id="m2").model_copy(update={"target": other})
    cards.accepted(message)
    surface.held[first] = asyncio.Event()
    earlier = asyncio.create_task(cards.handle(done("one", run=first)))
    await until_true(lambda: first in surface.closing)
    second = run_id_for("dingtalk", 1, "m2")
    await cards.handle(RunCompleted(run_id=second, channel_id=1, seq=9, target=other, text="two"))
    surface.held[first].set()
    await earlier
    assert [c[1] for c in surface.calls if c[0] == "close"] == [second, first]


async def test_a_command_after_a_mention_gets_no_card_and_unknown_slash_words_do() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    cards.accepted(inbound("@Alice /stop", message_id="a"))  # the router stops the run, no answer
    cards.accepted(inbound("@bot  /NEW", message_id="b"))
    assert cards.active_runs == 0
    cards.accepted(inbound("/etc/hosts is what file?", message_id="c"))  # the agent answers it
    assert cards.active_runs == 1


class FlakyCloses(RecordingSurface):
    """Card closes fail while `down` is set (the card APIs are out)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.down = True
        self.up = asyncio.Event()

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        if self.down:
            raise PlatformError("card service unavailable", 503)
        await super().close_card(card_id, text, failed=failed)
        self.up.set()


async def test_a_card_whose_close_failed_is_closed_later_pointing_to_the_plain_answer() -> None:
    surface = FlakyCloses()
    cards, _ = renderer(surface, mend=MendPolicy(first_retry_s=0.01, max_retry_s=0.05))
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(done("the answer"))
    assert surface.kinds() == ["open", "markdown"] and cards.mender.pending == 1
    surface.down = False
    await surface.up.wait()
    assert surface.calls[-1] == ("close", "r1", WORDINGS["zh"].sent_below)
    assert [c[2] for c in surface.calls].count("the answer") == 1, "one copy of the answer"
    await cards.close()


async def test_a_card_left_open_is_reported_after_the_retry_window() -> None:
    surface = FlakyCloses()
    cards, health = renderer(surface, mend=MendPolicy(first_retry_s=0.01, max_retry_s=0.01, retry_for_s=0.05))
    await cards.handle(done("the answer"))

    async def given_up() -> bool:
        return cards.mender.pending == 0

    await until(given_up)
    assert health.last_error is not None and health.last_error.startswith("card left open")
    assert surface.kinds() == ["open", "markdown"]


async def test_a_continuation_shown_but_not_finalized_is_closed_later_and_never_sent_again() -> None:
    class UnfinishedPosts(FlakyCloses):
        async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
            if card_id.endswith("-2") and self.down:
                raise PlatformError("card service unavailable", 503)
            await RecordingSurface.close_card(self, card_id, text, failed=failed)
            if card_id.endswith("-2"):
                self.up.set()

        async def post_card(self, card_id: str, target: ReplyTarget, text: str) -> None:
            self.calls.append(("post", card_id, text))
            if self.down:
                raise CardNotFinalized("shown, not finalized", 503)

    surface = UnfinishedPosts(max_card_chars=50)
    cards, _ = renderer(surface, mend=MendPolicy(first_retry_s=0.01, max_retry_s=0.05))
    text = "First part of a long answer.\n\nSecond part of a long answer."
    await cards.handle(done(text))
    assert "markdown" not in surface.kinds(), "the continuation shows already: no second copy"
    surface.down = False
    await surface.up.wait()
    assert surface.calls[-1] == ("close", "r1-2", "Second part of a long answer.")
    await cards.close()


async def test_a_new_owner_orders_finals_by_when_their_messages_were_sent_not_by_first_event() -> None:
    surface = HeldCloses()
    cards, _ = renderer(surface)
    sent = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    earlier = TARGET.model_copy(update={"sent_at": sent, "inbound_message_id": "m1"})
    later = TARGET.model_copy(update={"sent_at": sent + timedelta(seconds=2), "inbound_message_id": "m2"})
    # The channel moved here: the later message's run is the first this replica hears of.
    await cards.handle(RunStarted(run_id="r2", channel_id=1, target=later))
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=earlier))
    surface.held["r1"] = asyncio.Event()
    first = asyncio.create_task(cards.handle(done("one", run="r1").model_copy(update={"target": earlier})))
    await until_true(lambda: "r1" in surface.closing)
    second = asyncio.create_task(cards.handle(done("two", run="r2").model_copy(update={"target": later})))
    await until_true(lambda: second.done() or cards.finals_held == 1)
    surface.held["r1"].set()
    await asyncio.gather(first, second)
    assert [c[1] for c in surface.calls if c[0] == "close"] == ["r1", "r2"]


async def test_cards_waiting_to_be_closed_try_again_as_soon_as_a_card_call_gets_through() -> None:
    surface = FlakyCloses()
    # Left to its back-off, the card would wait a minute before its next try.
    cards, _ = renderer(surface, mend=MendPolicy(first_retry_s=60, max_retry_s=60))
    await cards.handle(done("the answer"))
    assert cards.mender.pending == 1
    surface.down = False
    cards.accepted(inbound("and now?", message_id="m9"))  # this card opens: the platform is back
    async with asyncio.timeout(5):  # not the minute of its back-off
        await surface.up.wait()
    assert surface.calls[-1] == ("close", "r1", WORDINGS["zh"].sent_below)
    await cards.close()


async def handed_over(redis_client: Redis, key_prefix: str) -> tuple[MemoryLedger, ReplyTarget, ReplyTarget]:
    """Two runs of one conversation opened by a channel's old owner, which then stops (SIGTERM:
    the channel moves on, nothing shown yet): the ledger and the two messages' targets."""
    ledger = MemoryLedger()
    sent = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    earlier = TARGET.model_copy(update={"sent_at": sent, "inbound_message_id": "m1"})
    later = TARGET.model_copy(update={"sent_at": sent + timedelta(seconds=2), "inbound_message_id": "m2"})
    old_surface = RecordingSurface()
    old, _ = renderer(old_surface, ledger=ledger, order=FinalsOrder(redis_client, key_prefix))
    await old.handle(RunStarted(run_id="r1", channel_id=1, target=earlier))
    await old.handle(RunStarted(run_id="r2", channel_id=1, target=later))
    await until_true(lambda: len([c for c in old_surface.calls if c[0] == "open"]) == 2)
    await old.close()
    return ledger, earlier, later


async def test_a_new_owner_holds_a_later_final_until_the_earlier_run_the_last_owner_left_is_shown(
    redis_client: Redis, key_prefix: str
) -> None:
    """The channel moved mid-answer: the old owner had both runs; the later one's final reaches
    the new owner first, the earlier one's only after its ack wait. Redis keeps the order."""
    ledger, earlier, later = await handed_over(redis_client, key_prefix)

    surface = RecordingSurface()
    new, _ = renderer(surface, ledger=ledger, order=FinalsOrder(redis_client, key_prefix))
    second = asyncio.create_task(new.handle(done("two", run="r2").model_copy(update={"target": later})))
    await until_true(lambda: new.finals_held == 1)
    assert not second.done()  # held back for r1, which this replica has not heard of
    await new.handle(done("one", run="r1").model_copy(update={"target": earlier}))
    await second
    assert [c[1] for c in surface.calls if c[0] == "close"] == ["r1", "r2"]
    await new.close()


async def test_a_later_final_still_waits_when_the_earlier_run_arrives_here_before_its_final(
    redis_client: Redis, key_prefix: str
) -> None:
    """After the hand-over the earlier run's events reach the new owner one by one: a delta
    first (now the run is known here, no longer "elsewhere"), its final later. The later final
    waits for that final, not only until the run is heard of."""
    ledger, earlier, later = await handed_over(redis_client, key_prefix)

    surface = RecordingSurface()
    new, _ = renderer(surface, ledger=ledger, order=FinalsOrder(redis_client, key_prefix))
    second = asyncio.create_task(new.handle(done("two", run="r2").model_copy(update={"target": later})))
    await until_true(lambda: new.finals_held == 1)
    await new.handle(delta(1, "on", 2).model_copy(update={"target": earlier}))
    await asyncio.sleep(ORDER_POLL_S * 3)  # the held final has seen r1 arrive here
    assert not second.done(), "r2 was shown while r1, now known here, had not shown its final"
    await new.handle(done("one", run="r1").model_copy(update={"target": earlier}))
    await second
    assert [c[1] for c in surface.calls if c[0] == "close"] == ["r1", "r2"]
    await new.close()


async def test_a_final_cut_short_by_the_channel_moving_still_holds_later_finals_at_the_next_owner(
    redis_client: Redis, key_prefix: str
) -> None:
    """The old owner was showing the earlier run's final when it stopped: that final's event
    comes to the new owner only after its ack wait. The later final, which reaches the new
    owner first, waits for it."""
    ledger = MemoryLedger()
    sent = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    earlier = TARGET.model_copy(update={"sent_at": sent, "inbound_message_id": "m1"})
    later = TARGET.model_copy(update={"sent_at": sent + timedelta(seconds=2), "inbound_message_id": "m2"})
    old_surface = HeldCloses()
    old_surface.held["r1"] = asyncio.Event()  # never set: the card call is in flight at the stop
    old, _ = renderer(old_surface, ledger=ledger, order=FinalsOrder(redis_client, key_prefix))
    await old.handle(RunStarted(run_id="r1", channel_id=1, target=earlier))
    await until_true(lambda: ("open", "r1", "") in old_surface.calls)
    showing = asyncio.create_task(old.handle(done("one", run="r1").model_copy(update={"target": earlier})))
    await until_true(lambda: "r1" in old_surface.closing)
    showing.cancel()  # the channel stops: its reply consumer is cancelled mid-delivery
    with pytest.raises(asyncio.CancelledError):
        await showing
    await old.close()

    surface = RecordingSurface()
    new, _ = renderer(surface, ledger=ledger, order=FinalsOrder(redis_client, key_prefix))
    second = asyncio.create_task(new.handle(done("two", run="r2").model_copy(update={"target": later})))
    await until_true(lambda: new.finals_held == 1)
    await asyncio.sleep(ORDER_POLL_S * 3)
    assert not second.done(), "r2 was shown before r1, whose final the old owner never showed"
    await new.handle(done("one", run="r1").model_copy(update={"target": earlier}))
    await second
    assert [c[1] for c in surface.calls if c[0] == "close"] == ["r1", "r2"]
    await new.close()


async def test_an_undeliverable_final_ends_its_card_before_a_later_final_shows() -> None:
    """A reply event that kept failing (poisoned, not the platform) is given up: its card says so
    at once, and only then does the conversation's next answer show."""
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(RunStarted(run_id="r2", channel_id=1, target=TARGET))
    await until_true(lambda: len([c for c in surface.calls if c[0] == "open"]) == 2)
    later = asyncio.create_task(cards.handle(done("two", run="r2")))
    await until_true(lambda: cards.finals_held == 1)
    await cards.undeliverable(done("one", run="r1"), "poisoned")
    await later
    closes = [(c[0], c[1]) for c in surface.calls if c[0].startswith("close")]
    assert closes == [("close-failed", "r1"), ("close", "r2")]
    assert cards.mender.pending == 0, "nothing left to close later"
    await cards.close()


async def test_a_run_the_last_owner_showed_but_did_not_strike_off_holds_nothing_back(
    redis_client: Redis, key_prefix: str
) -> None:
    ledger = MemoryLedger()
    order = FinalsOrder(redis_client, key_prefix)
    sent = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    later = TARGET.model_copy(update={"sent_at": sent + timedelta(seconds=2), "inbound_message_id": "m2"})
    cards, _ = renderer(RecordingSurface(), ledger=ledger, order=order, final_order_wait_s=60)
    # The old owner showed r1 and died before it struck r1 off the conversation's order.
    await order.add("dingtalk:1:" + TARGET.conversation_id, "r1", sent.timestamp())
    ledger.states["r1"] = ReplyState.DONE
    async with asyncio.timeout(5):  # not the minute of the order wait
        await cards.handle(done("two", run="r2").model_copy(update={"target": later}))
    assert await order.earlier("dingtalk:1:" + TARGET.conversation_id, "r9", sent.timestamp() + 60) == []


class Outage(RecordingSurface):
    """Every way of showing an answer fails while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def _check(self) -> None:
        if self.down:
            raise PlatformError("service unavailable", 503)

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        self._check()
        await super().close_card(card_id, text, failed=failed)

    async def send_text(self, target: ReplyTarget, text: str, *, markdown: bool = False) -> None:
        self._check()
        await super().send_text(target, text, markdown=markdown)


async def test_after_an_outage_finals_show_in_the_order_of_their_messages() -> None:
    surface = Outage()
    cards, _ = renderer(surface, final_order_wait_s=0.05, retrying_final_wait_s=5)
    first, second = run_id_for("dingtalk", 1, "m1"), run_id_for("dingtalk", 1, "m2")
    cards.accepted(inbound("first", message_id="m1"))
    cards.accepted(inbound("second", message_id="m2"))
    with pytest.raises(PlatformError):  # the event comes again (the reply consumer retries it)
        await cards.handle(done("one", run=first))
    surface.down = False
    # The platform is back, and the later run's retry happens to come first: it waits.
    later = asyncio.create_task(cards.handle(done("two", run=second)))
    await until_true(lambda: cards.finals_held == 1)
    await cards.handle(done("one", run=first))
    await later
    closes = [(c[1], c[2]) for c in surface.calls if c[0] == "close"]
    assert closes == [(first, "one"), (second, "two")]
