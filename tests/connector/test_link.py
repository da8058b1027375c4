"""The core's websocket link against a real websocket server: what stopping does to frames the
platform sent just before it heard our close."""

import asyncio

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve

from imgate_connector.health import ChannelHealth
from imgate_connector.link import ReconnectingLink
from imgate_connector.settings import ConnectorSettings


async def test_frames_sent_before_the_platform_heard_our_close_are_still_read() -> None:
    """The platform pushed two frames; the second still sits in our socket when the channel
    stops. It is handed on (to be published) rather than left to a redelivery seconds later,
    behind the messages sent after it."""
    pushed = asyncio.Event()

    async def platform(ws: ServerConnection) -> None:
        await ws.send("first")
        await ws.send("second")
        pushed.set()
        await ws.wait_closed()

    read: list[str] = []
    first_taken, go_on = asyncio.Event(), asyncio.Event()

    async def on_frame(ws: ClientConnection, raw: str | bytes, replace: asyncio.Event) -> None:
        read.append(str(raw))
        if raw == "first":
            first_taken.set()
            await go_on.wait()  # the channel is told to stop while this frame is being taken

    async with serve(platform, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]

        async def open_link() -> str:
            return f"ws://127.0.0.1:{port}"

        link = ReconnectingLink(
            "test",
            1,
            ConnectorSettings(),
            ChannelHealth(channel_id=1, owner="test"),
            open_link=open_link,
            on_frame=on_frame,
            max_frame_bytes=1024,
        )
        await link.start()
        await asyncio.wait_for(asyncio.gather(first_taken.wait(), pushed.wait()), 5)
        stopping = asyncio.create_task(link.stop())
        await asyncio.sleep(0.05)
        go_on.set()
        await asyncio.wait_for(stopping, 2)

    assert read == ["first", "second"]
