"""Micro-benchmarks that print figures beside a baseline measured in the same run.

1. Inbound translation: DingTalk payload → validated InboundMessage → JSON for the bus, against
   the dingtalk-stream SDK's own ChatbotMessage parsing plus json.dumps.
2. Card calls per reply: our CardRenderer (coalescing) against updating the card on every chunk,
   for a 120-token answer streamed at 100 tokens/s.

The end-to-end benchmarks (latency, loss, throughput across services) come with the bench suite.
"""

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dingtalk_stream.chatbot import ChatbotMessage

from imgate_common.messages import ConversationType, ReplyTarget, RunCompleted, RunDelta, RunStarted
from imgate_connector.health import ChannelHealth
from imgate_connector.platforms.base import ReplySurface
from imgate_connector.platforms.dingtalk.translate import translate
from imgate_connector.rendering import CardRenderer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router import rows as router_rows
from runner import rows as runner_rows

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = json.loads((ROOT / "tests/fixtures/dingtalk/text_group_at.json").read_text())


def per_second(fn: Callable[[], None], seconds: float = 1.0) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            fn()
        count += 200
    return count / (time.perf_counter() - start)


def ours_translate() -> None:
    translate(PAYLOAD, 1, None).model_dump_json()


def baseline_translate() -> None:
    msg = ChatbotMessage.from_dict(PAYLOAD)
    json.dumps(msg.to_dict())


class CountingSurface(ReplySurface):
    def __init__(self) -> None:
        self.calls = 0

    async def open_card(self, run_id: str, target: ReplyTarget) -> None:
        self.calls += 1

    async def update_card(self, run_id: str, text: str) -> None:
        self.calls += 1

    async def close_card(self, run_id: str, text: str, *, failed: bool) -> None:
        self.calls += 2  # DingTalk needs a final stream call and a status update

    async def send_text(self, target: ReplyTarget, text: str) -> None:
        self.calls += 1


async def card_calls(interval: float, tokens: int = 120, rate: float = 100.0) -> int:
    surface = CountingSurface()
    renderer = CardRenderer(surface, ChannelHealth(channel_id=1, owner="bench"), interval)
    target = ReplyTarget(
        platform="dingtalk",
        channel_id=1,
        conversation_id="c",
        conversation_type=ConversationType.SINGLE,
        sender_id="u",
        inbound_message_id="m",
    )
    await renderer.handle(RunStarted(run_id="r", channel_id=1, target=target))
    text = ""
    for i in range(tokens):
        text += "tok "
        await renderer.handle(
            RunDelta(run_id="r", channel_id=1, seq=i + 1, target=target, text="tok ", length=len(text))
        )
        await asyncio.sleep(1 / rate)
    await renderer.handle(RunCompleted(run_id="r", channel_id=1, seq=tokens + 1, target=target, text=text))
    return surface.calls


def main() -> int:
    ours, base = per_second(ours_translate), per_second(baseline_translate)
    ours_calls = asyncio.run(card_calls(0.25))
    base_calls = asyncio.run(card_calls(0.0))
    rows = [
        ("inbound translations/s (higher is better)", f"{ours:,.0f}", f"{base:,.0f}", f"{ours / base:.2f}x"),
        (
            "card API calls per 120-token reply (lower is better)",
            str(ours_calls),
            str(base_calls),
            f"{base_calls / ours_calls:.1f}x fewer",
        ),
    ]
    quick = "--quick" in sys.argv
    rows += router_rows(quick=quick)
    rows += runner_rows(quick=quick)
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'imgate':>10}  {'baseline':>10}  ratio")
    for name, a, b, ratio in rows:
        print(f"{name:<{width}}  {a:>10}  {b:>10}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
