"""The baseline: one process answering DingTalk the way the dingtalk-stream SDK's examples do.

`python bench/baseline_bot.py --endpoint IMSIM --model-url URL --app ID:SECRET [--app ...]`

Per app a `DingTalkStreamClient` with an `AsyncChatbotHandler`: the handler ACKs each message at
once and answers it on the handler's thread pool (8 workers, the SDK's default). The answer is
an AI markdown card (`ai_markdown_card_start`: create + deliver with flowStatus 1, "thinking"),
the model is called through the `openai` client with streaming, and the card text follows it:
`--update-every 0` updates the card on every chunk (`ai_streaming`), a positive value at most
that often (the 0.8 s variant), then `ai_finish` writes the whole answer with flowStatus 3.
Every card call is the SDK's own blocking `requests` call; a refused one (403 QpsLimit, 429) is
logged by the SDK and skipped, as the examples leave it. All apps share one event loop.
"""

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoint", required=True, help="DingTalk OpenAPI base URL (imsim)")
    parser.add_argument("--model-url", required=True, help="OpenAI-compatible base URL, …/v1")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--app", action="append", required=True, help="CLIENT_ID:CLIENT_SECRET")
    parser.add_argument("--update-every", type=float, default=0.0, help="seconds; 0 = every chunk")
    parser.add_argument("--workers", type=int, default=8, help="handler thread pool per app")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    # The SDK reads its endpoint once, when it is imported.
    os.environ["DINGTALK_OPENAPI_ENDPOINT"] = args.endpoint
    import dingtalk_stream
    from dingtalk_stream import AckMessage, AsyncChatbotHandler, ChatbotMessage
    from openai import OpenAI

    logging.basicConfig(level=logging.WARNING)
    model = OpenAI(base_url=args.model_url, api_key="not-needed", max_retries=0, timeout=120)

    class ModelCardHandler(AsyncChatbotHandler):  # type: ignore[misc]
        """Answers each message with an AI markdown card that follows the model's stream."""

        def process(self, callback: Any) -> tuple[int, str]:
            incoming = ChatbotMessage.from_dict(callback.data)
            card = self.ai_markdown_card_start(incoming)
            try:
                stream = model.chat.completions.create(
                    model=args.model,
                    messages=[{"role": "user", "content": incoming.text.content.strip()}],
                    stream=True,
                )
                text, shown_at = "", float("-inf")  # the first chunk shows at once
                for chunk in stream:
                    delta = chunk.choices[0].delta.content if chunk.choices else None
                    if not delta:
                        continue
                    text += delta
                    if args.update_every <= 0:
                        card.ai_streaming(delta, append=True)
                    elif time.monotonic() - shown_at >= args.update_every:
                        card.ai_streaming(text, append=False)
                        shown_at = time.monotonic()
                card.ai_finish(text)
            except Exception:
                self.logger.exception("answer failed")
                card.ai_fail()
            return AckMessage.STATUS_OK, "OK"

    clients = []
    for app in args.app:
        client_id, _, secret = app.partition(":")
        client = dingtalk_stream.DingTalkStreamClient(dingtalk_stream.Credential(client_id, secret))
        client.logger.setLevel(logging.WARNING)
        client.register_callback_handler(ChatbotMessage.TOPIC, ModelCardHandler(max_workers=args.workers))
        clients.append(client)

    async def serve() -> None:
        await asyncio.gather(*(client.start() for client in clients))

    print(f"baseline_bot_started apps={len(clients)} update_every={args.update_every}", flush=True)
    asyncio.run(serve())


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        pass
