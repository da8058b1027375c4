"""CardRenderer: reply events → card calls, coalesced, finalized once, with plain-text fallback."""

import asyncio
from dataclasses import dataclass, field

from imgate_common.errors import FailureCategory, PlatformError, RateLimited
from imgate_common.messages import (
    Notice,
    ReplyTarget,
    RunCompleted,
    RunDelta,
    RunFailed,
    RunStarted,
)
from imgate_connector.health import ChannelHealth
from imgate_connector.platforms.base import ReplySurface
from imgate_connector.rendering import CardRenderer
from tests.support.factories import reply_target

TARGET = reply_target()


@dataclass
class RecordingSurface(ReplySurface):
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    fail_open: Exception | None = None
    fail_close: Exception | None = None

    async def open_card(self, run_id: str, target: ReplyTarget) -> None:
        if self.fail_open:
            raise self.fail_open
        self.calls.append(("open", run_id, ""))

    async def update_card(self, run_id: str, text: str) -> None:
        self.calls.append(("update", run_id, text))

    async def close_card(self, run_id: str, text: str, *, failed: bool) -> None:
        if self.fail_close:
            raise self.fail_close
        self.calls.append(("close-failed" if failed else "close", run_id, text))

    async def send_text(self, target: ReplyTarget, text: str) -> None:
        self.calls.append(("text", target.conversation_id, text))


def renderer(surface: RecordingSurface, interval: float = 0.05) -> tuple[CardRenderer, ChannelHealth]:
    health = ChannelHealth(channel_id=1, owner="test")
    return CardRenderer(surface, health, interval), health


def delta(seq: int, text: str, length: int, run: str = "r1") -> RunDelta:
    return RunDelta(run_id=run, channel_id=1, seq=seq, target=TARGET, text=text, length=length)


async def test_fast_deltas_are_coalesced_and_the_card_ends_with_the_full_text() -> None:
    surface = RecordingSurface()
    cards, health = renderer(surface, interval=0.2)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    text = ""
    for i in range(50):
        text += f"w{i} "
        await cards.handle(delta(i + 1, f"w{i} ", len(text)))
    await asyncio.sleep(0.05)
    await cards.handle(RunCompleted(run_id="r1", channel_id=1, seq=51, target=TARGET, text=text.strip()))
    kinds = [c[0] for c in surface.calls]
    assert kinds[0] == "open" and kinds[-1] == "close"
    assert 1 <= kinds.count("update") < 5, "50 deltas in a burst must not become 50 card updates"
    assert surface.calls[-1][2] == text.strip()
    assert health.replies_out == 1


async def test_updates_show_growing_text_in_order() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(delta(1, "Hello", 5))
    await asyncio.sleep(0.05)
    await cards.handle(delta(2, " world", 11))
    await asyncio.sleep(0.05)
    await cards.handle(RunCompleted(run_id="r1", channel_id=1, seq=3, target=TARGET, text="Hello world"))
    updates = [c[2] for c in surface.calls if c[0] == "update"]
    assert updates == ["Hello", "Hello world"]


async def test_a_redelivered_final_event_does_not_answer_twice() -> None:
    surface = RecordingSurface()
    cards, health = renderer(surface)
    done = RunCompleted(run_id="r1", channel_id=1, seq=1, target=TARGET, text="once")
    await cards.handle(done)
    await cards.handle(done)
    assert [c[0] for c in surface.calls] == ["open", "close"]
    assert health.replies_out == 1


async def test_completed_without_started_still_shows_the_answer() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    await cards.handle(RunCompleted(run_id="r9", channel_id=1, seq=7, target=TARGET, text="late"))
    assert surface.calls == [("open", "r9", ""), ("close", "r9", "late")]


async def test_card_failure_falls_back_to_a_plain_reply_and_counts_rate_limits() -> None:
    surface = RecordingSurface(fail_open=RateLimited("QpsLimit", 403, "QpsLimit.Card"))
    cards, health = renderer(surface)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(delta(1, "partial", 7))
    await cards.handle(RunCompleted(run_id="r1", channel_id=1, seq=2, target=TARGET, text="final"))
    assert surface.calls == [("text", "cid", "final")]
    assert health.rate_limit_hits == 1
    assert health.last_error and "QpsLimit" in health.last_error


async def test_close_failure_falls_back_to_plain_reply() -> None:
    surface = RecordingSurface(fail_close=PlatformError("boom", 500))
    cards, _ = renderer(surface)
    await cards.handle(RunCompleted(run_id="r1", channel_id=1, seq=1, target=TARGET, text="answer"))
    assert surface.calls[-1] == ("text", "cid", "answer")


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


async def test_notice_is_a_plain_reply() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface)
    await cards.handle(Notice(run_id="n1", channel_id=1, target=TARGET, text="已开始新对话"))
    assert surface.calls == [("text", "cid", "已开始新对话")]


async def test_a_redone_run_starts_the_card_text_over_and_ignores_the_dead_attempt() -> None:
    surface = RecordingSurface()
    cards, _ = renderer(surface, interval=0.01)
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET))
    await cards.handle(delta(1, "Half of the fir", 15))
    await cards.handle(RunStarted(run_id="r1", channel_id=1, target=TARGET, attempt=2))
    await cards.handle(
        RunDelta(run_id="r1", channel_id=1, seq=1, target=TARGET, text="Second", length=6, attempt=2)
    )
    await cards.handle(delta(2, "st try", 21))  # late, from the dead attempt
    await asyncio.sleep(0.05)
    await cards.handle(
        RunCompleted(run_id="r1", channel_id=1, seq=2, target=TARGET, text="Second try", attempt=2)
    )
    assert [c[0] for c in surface.calls].count("open") == 1
    assert "Half of the first try" not in [c[2] for c in surface.calls]
    assert surface.calls[-1] == ("close", "r1", "Second try")
