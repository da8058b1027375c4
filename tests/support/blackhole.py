"""A TCP proxy in front of a real server that can turn into a black hole: connections stay
open, nothing passes either way, no error comes back (a partitioned network)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator


class BlackHoleProxy:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.cut = False  # while set, bytes are swallowed

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if not self.cut:
                    sink.write(data)
                    await sink.drain()
        finally:
            with contextlib.suppress(Exception):
                sink.close()


@contextlib.asynccontextmanager
async def black_hole_proxy(host: str, port: int) -> AsyncIterator[BlackHoleProxy]:
    proxy = BlackHoleProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
