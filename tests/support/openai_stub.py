"""A scripted OpenAI-compatible chat-completions server for tests (a hosted model can't run here).

It streams a deterministic answer word by word, records every request it gets, and can be told
to fail with a given HTTP status so error mapping is tested against real HTTP.
"""

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def default_answer(messages: list[dict[str, Any]]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return f"Answer {len(users)}: you said «{users[-1]}» after {len(users) - 1} earlier turns."


@dataclass
class ScriptedModel:
    answer: Callable[[list[dict[str, Any]]], str] = default_answer
    word_delay_s: float = 0.01
    fail_status: int | None = None
    fail_times: int | None = None  # fail only the first N requests (None: every request)
    first_token_delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    streams_closed_early: int = 0
    answers: list[str] = field(default_factory=list)


def build_app(model: ScriptedModel) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        model.requests.append(body)
        failing = model.fail_times is None or len(model.requests) <= model.fail_times
        if model.fail_status is not None and failing:
            return JSONResponse(
                {"error": {"message": "scripted failure", "type": "scripted", "code": None}},
                status_code=model.fail_status,
            )
        text = model.answer(body["messages"])
        model.answers.append(text)
        words = text.split(" ")

        async def events() -> Any:
            created = int(time.time())
            finished = False
            try:
                await asyncio.sleep(model.first_token_delay_s)
                async for event in chunks(created):
                    yield event
                finished = True
            finally:
                if not finished:
                    model.streams_closed_early += 1

        async def chunks(created: int) -> Any:
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                chunk = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(model.word_delay_s)
            final = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.get("model", "scripted"),
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10},
            }
            yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_scripted_model(model: ScriptedModel) -> Iterator[str]:
    """Serve on a free loopback port in a thread; yields the base URL (ending in /v1)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(model), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("scripted model server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(5)
