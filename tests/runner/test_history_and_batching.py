"""Prompt budget and delta batching."""

import time
from typing import Any

from sqlmodel import select

from imgate_common.db.models import Agent, Message
from imgate_runner.batching import DeltaBatcher
from imgate_runner.history import build_prompt, history_limit, load_history
from tests.runner.conftest import setup_run


def turns(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(conversation_id="c", role=role, content=text) for role, text in pairs]


def test_system_prompt_always_kept_and_oldest_turns_dropped_first() -> None:
    agent = Agent(name="a", provider="local", system_prompt="S", max_turns=2, max_prompt_tokens=10_000)
    history = turns(("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"), ("user", "u3"))
    prompt = build_prompt(agent, history)
    assert [(m.role, m.content) for m in prompt] == [
        ("system", "S"),
        ("user", "u2"),
        ("assistant", "a2"),
        ("user", "u3"),
    ]


def test_token_budget_drops_old_turns_but_keeps_the_newest_message() -> None:
    agent = Agent(name="a", provider="local", max_turns=50, max_prompt_tokens=30)
    history = turns(("user", "x" * 200), ("assistant", "y" * 40), ("user", "z" * 400))
    prompt = build_prompt(agent, history)
    assert [m.content for m in prompt] == ["z" * 400]


def test_batcher_sends_the_first_chunk_at_once_then_flushes_on_size() -> None:
    batcher = DeltaBatcher(interval_s=60, max_chars=5)
    out = [b for b in (batcher.add(c) for c in ["ab", "cd", "ef", "g", "h"]) if b]
    assert out == ["ab", "cdefg"]
    assert batcher.flush() == "h"
    assert batcher.text == "abcdefgh"
    assert batcher.flush() is None


def test_batcher_flushes_on_time() -> None:
    batcher = DeltaBatcher(interval_s=0.01, max_chars=1000)
    assert batcher.add("a") is None or batcher.text == "a"
    time.sleep(0.02)
    assert batcher.add("b") is not None


async def test_keep_alive_beats_while_the_run_waits_and_stops_after() -> None:
    import asyncio

    from imgate_runner.service import keep_alive

    beats: list[float] = []

    async def heartbeat() -> None:
        beats.append(time.monotonic())

    async with keep_alive(heartbeat, 0.02):
        await asyncio.sleep(0.15)
    count = len(beats)
    await asyncio.sleep(0.06)
    assert count >= 4, "a waiting run must keep telling JetStream it is alive"
    assert len(beats) == count, "beats must stop when the run ends"


async def test_a_long_conversation_is_read_in_a_bounded_slice(sessions: Any) -> None:
    """A run reads the newest messages its prompt can keep, not the whole conversation."""
    agent = Agent(name="a", provider="local", max_turns=3, max_prompt_tokens=100_000)
    first = await setup_run(sessions, None, "q0")
    async with sessions() as session:
        for n in range(1, 300):
            session.add(Message(conversation_id=first.conversation_id, role="assistant", content=f"a{n - 1}"))
            session.add(Message(conversation_id=first.conversation_id, role="user", content=f"q{n}"))
        await session.commit()
        last = (
            await session.exec(
                select(Message).where(
                    Message.content == "q299", Message.conversation_id == first.conversation_id
                )
            )
        ).one()
        assert last.id is not None
        every = await load_history(session, first.conversation_id, last.id, 10_000)
        bounded = await load_history(session, first.conversation_id, last.id, history_limit(agent, 200))
    assert len(every) == 599 and len(bounded) == 8
    assert bounded[-1].content == "q299" and [m.id for m in bounded] == sorted(m.id for m in bounded)  # type: ignore[type-var]
    assert build_prompt(agent, bounded) == build_prompt(agent, every)
    assert history_limit(Agent(name="b", provider="local", max_turns=1000), 200) == 200


async def test_keep_alive_ends_even_when_a_heartbeat_swallows_its_cancellation() -> None:
    """redis-py and nats-py calls on Python 3.11 can swallow a cancellation: the heartbeat loop
    must end all the same, or the run's task never finishes (seen in chaos media-flood)."""
    import asyncio

    from imgate_runner.service import keep_alive

    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        beats += 1
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass  # what such a library call does

    async def run() -> None:
        async with keep_alive(heartbeat, 0.001):
            while beats == 0:  # noqa: ASYNC110 (the heartbeat runs in its own task)
                await asyncio.sleep(0.001)

    await asyncio.wait_for(run(), 10)  # a guard against hanging forever, not a timing claim
