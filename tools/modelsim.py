"""An OpenAI-compatible chat-completions server with a knob for everything a test or a benchmark
needs to hold fixed: time to first token, pace, answer length, and HTTP failures on demand.

A hosted model cannot run here and the local one is too slow to load-test with, so the gateway is
pointed at this instead. Every answer names the request it answers (it quotes the last user
text), so a test can tell whose answer a card shows. Knobs change at run time over `/sim/*`:

    GET/PATCH /sim/config   {"ttft_ms": 150, "tokens_per_s": 40, "answer_tokens": 40}
    POST      /sim/fail     {"status": 503, "for_s": 20}   (HTTP 503 for the next 20 s)
    GET       /sim/stats    {"requests", "failed", "completed", "in_flight", "streams_closed_early"}

`python -m tools.modelsim --port 8799` serves it as a process; `serve_model(model)` in a thread.
"""

import argparse
import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

Answer = Callable[[list[dict[str, Any]]], str]
MODEL_NAME = "modelsim"


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # multi-part (text + images): the text parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict)).strip()
            return str(content)
    return ""


def echo_answer(messages: list[dict[str, Any]], tokens: int) -> str:
    """`Re «<last user text>»: t3 t4 …`, `tokens` words in all (at least the quote)."""
    head = f"Re «{last_user_text(messages)}»:".split(" ")
    return " ".join(head + [f"t{i}" for i in range(len(head), tokens)])


@dataclass
class ModelSim:
    """What the server does (change any field at any time) and what it has seen.

    A "word" is what one streamed chunk carries; the simulation treats it as one token.
    """

    first_token_delay_s: float = 0.15
    word_delay_s: float = 1 / 40
    answer_tokens: int = 40
    # None: `echo_answer` with `answer_tokens` words.
    answer: Answer | None = None
    fail_status: int | None = None
    fail_times: int | None = None  # fail only the first N requests (None: no such limit)
    fail_until: float | None = None  # monotonic deadline of the failure (None: no such limit)
    # Request bodies and answers are kept for tests to read; a long load run can turn that off.
    keep_records: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    received: int = 0
    failed: int = 0
    completed: int = 0
    in_flight: int = 0
    streams_closed_early: int = 0

    @classmethod
    def from_knobs(
        cls, ttft_ms: float = 150, tokens_per_s: float = 40, answer_tokens: int = 40
    ) -> "ModelSim":
        model = cls()
        model.configure(ttft_ms=ttft_ms, tokens_per_s=tokens_per_s, answer_tokens=answer_tokens)
        return model

    def configure(
        self,
        *,
        ttft_ms: float | None = None,
        tokens_per_s: float | None = None,
        answer_tokens: int | None = None,
    ) -> None:
        """Set the knobs in the units people think in; `tokens_per_s` 0 means no pacing at all."""
        if ttft_ms is not None:
            self.first_token_delay_s = ttft_ms / 1000
        if tokens_per_s is not None:
            self.word_delay_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0
        if answer_tokens is not None:
            self.answer_tokens = answer_tokens

    def knobs(self) -> dict[str, Any]:
        return {
            "ttft_ms": round(self.first_token_delay_s * 1000, 3),
            "tokens_per_s": round(1 / self.word_delay_s, 3) if self.word_delay_s > 0 else 0,
            "answer_tokens": self.answer_tokens,
        }

    def fail_for(self, status: int, seconds: float) -> None:
        """Answer every request with HTTP `status` for the next `seconds`."""
        self.fail_status, self.fail_times = status, None
        self.fail_until = time.monotonic() + seconds

    def failure(self) -> int | None:
        """The status to answer the request just recorded with, or None to answer it."""
        if self.fail_status is None:
            return None
        if self.fail_times is not None and self.received > self.fail_times:
            return None
        if self.fail_until is not None and time.monotonic() >= self.fail_until:
            return None
        return self.fail_status

    def reply(self, messages: list[dict[str, Any]]) -> str:
        return self.answer(messages) if self.answer else echo_answer(messages, self.answer_tokens)

    def stats(self) -> dict[str, Any]:
        failing = self.failure() is not None
        return {
            "requests": self.received,
            "failed": self.failed,
            "completed": self.completed,
            "in_flight": self.in_flight,
            "streams_closed_early": self.streams_closed_early,
            "failing": failing,
        }


class ConfigPatch(BaseModel):
    ttft_ms: float | None = Field(None, ge=0)
    tokens_per_s: float | None = Field(None, ge=0)
    answer_tokens: int | None = Field(None, ge=1)


class FailBody(BaseModel):
    status: int = Field(503, ge=400, le=599)
    for_s: float = Field(20.0, gt=0)


def _chunk(
    body: dict[str, Any],
    created: int,
    delta: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> str:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-modelsim",
        "object": "chat.completion.chunk",
        "created": created,
        "model": body.get("model", MODEL_NAME),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk)}\n\n"


def build_app(model: ModelSim) -> FastAPI:
    app = FastAPI(title="modelsim")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "modelsim"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        model.received += 1
        if model.keep_records:
            model.requests.append(body)
        status = model.failure()
        if status is not None:
            model.failed += 1
            return JSONResponse(
                {"error": {"message": "scripted failure", "type": "scripted", "code": None}},
                status_code=status,
            )
        text = model.reply(body.get("messages") or [])
        if model.keep_records:
            model.answers.append(text)
        words = text.split(" ")
        usage = {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}
        if not body.get("stream"):
            model.in_flight += 1
            try:
                await asyncio.sleep(model.first_token_delay_s + model.word_delay_s * len(words))
            finally:
                model.in_flight -= 1
            model.completed += 1
            return {
                "id": "chatcmpl-modelsim",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", MODEL_NAME),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }

        async def events() -> AsyncIterator[str]:
            created = int(time.time())
            model.in_flight += 1
            finished = False
            try:
                await asyncio.sleep(model.first_token_delay_s)
                started = time.monotonic()
                for i, word in enumerate(words):
                    # Paced from the first token, so a busy event loop does not slow the rate.
                    await asyncio.sleep(max(0.0, started + i * model.word_delay_s - time.monotonic()))
                    yield _chunk(body, created, {"content": word if i == 0 else " " + word})
                yield _chunk(body, created, {}, "stop", usage)
                yield "data: [DONE]\n\n"
                finished = True
                model.completed += 1
            finally:
                model.in_flight -= 1
                if not finished:
                    model.streams_closed_early += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/sim/config")
    async def get_config() -> dict[str, Any]:
        return model.knobs()

    @app.patch("/sim/config")
    async def patch_config(patch: ConfigPatch) -> dict[str, Any]:
        model.configure(**patch.model_dump())
        return model.knobs()

    @app.post("/sim/fail")
    async def fail(body: FailBody) -> dict[str, Any]:
        model.fail_for(body.status, body.for_s)
        return {"status": body.status, "for_s": body.for_s}

    @app.delete("/sim/fail")
    async def recover() -> dict[str, Any]:
        model.fail_status = model.fail_times = model.fail_until = None
        return model.stats()

    @app.get("/sim/stats")
    async def stats() -> dict[str, Any]:
        return model.stats()

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_app(app: FastAPI, what: str = "model server") -> Iterator[int]:
    """Serve an ASGI app on a free loopback port in a daemon thread; yields the port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise TimeoutError(f"{what} did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(5)


@contextmanager
def serve_model(model: ModelSim | None = None) -> Iterator[str]:
    """Serve `model` (default knobs if None) in a thread; yields the base URL, ending in /v1."""
    with serve_app(build_app(model or ModelSim())) as port:
        yield f"http://127.0.0.1:{port}/v1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="modelsim", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--ttft-ms", type=float, default=150.0)
    parser.add_argument("--tokens-per-s", type=float, default=40.0)
    parser.add_argument("--answer-tokens", type=int, default=40)
    args = parser.parse_args(argv)
    model = ModelSim.from_knobs(args.ttft_ms, args.tokens_per_s, args.answer_tokens)
    model.keep_records = False  # a process is read through /sim/stats only
    uvicorn.run(build_app(model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
