"""Pictures and files: fetched through messageFiles/download into the bus's object store, with
limits; small text files are also given to the model as text."""

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from imgate_common.messages import InboundMessage, MessageKind
from imgate_connector.media import MediaStore
from tests.connector.conftest import Start
from tests.connector.sim import Sim, until

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture
async def media_store(bus: tuple[NATS, JetStreamContext]) -> AsyncIterator[MediaStore]:
    _, js = bus
    yield MediaStore(js, ttl_s=600, max_bytes=64 * 1024)


async def upload(sim: Sim, content: bytes, content_type: str, name: str | None = None) -> str:
    url = sim.url("media") + (f"?file_name={name}" if name else "")
    response = await sim.client.post(url, content=content, headers={"content-type": content_type})
    response.raise_for_status()
    return str(response.json()["download_code"])


async def receive(sim: Sim, run_adapter: Start, **message: object) -> InboundMessage:
    got: list[InboundMessage] = []

    async def sink(inbound: InboundMessage) -> None:
        got.append(inbound)

    await run_adapter(sink, media_inline_text_max_bytes=1024)
    sent = await sim.send(**message)  # type: ignore[arg-type]

    async def acked() -> bool:
        return await sim.acks_for(sent["msg_id"]) == [200]

    await until(acked)
    return got[0]


async def test_a_picture_lands_in_the_object_store(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    code = await upload(sim, PNG, "image/png")
    message = await receive(sim, run_adapter, msgtype="picture", content={"downloadCode": code})
    [image] = message.attachments
    assert image.kind == MessageKind.IMAGE and image.error is None
    assert image.size == len(PNG) and image.content_type == "image/png" and image.object_name
    assert await media_store.read(image.object_name) == PNG


async def test_a_small_text_file_is_read_into_the_message(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    code = await upload(sim, "第一行\nsecond line\n".encode(), "text/plain", "notes.txt")
    message = await receive(
        sim, run_adapter, msgtype="file", content={"downloadCode": code, "fileName": "notes.txt"}
    )
    assert message.kind == MessageKind.FILE
    assert message.text == "[file] notes.txt (22 B)\n\n第一行\nsecond line"
    assert message.attachments[0].object_name


async def test_a_big_file_is_named_but_not_inlined(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    code = await upload(sim, b"x" * 4000, "text/plain", "big.log")
    message = await receive(
        sim, run_adapter, msgtype="file", content={"downloadCode": code, "fileName": "big.log"}
    )
    assert message.text == "[file] big.log (3.9 KB)"


async def test_a_file_over_the_limit_is_refused_and_the_message_still_arrives(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    code = await upload(sim, b"\x00" * (65 * 1024), "application/pdf", "huge.pdf")
    message = await receive(
        sim, run_adapter, msgtype="file", content={"downloadCode": code, "fileName": "huge.pdf"}
    )
    [attachment] = message.attachments
    assert attachment.object_name is None and attachment.error and "too large" in attachment.error
    assert message.text.startswith("[file] huge.pdf (too large")


async def test_rich_text_keeps_its_text_and_fetches_its_images(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    code = await upload(sim, PNG, "image/png")
    rich = [{"text": "What is "}, {"type": "picture", "downloadCode": code}, {"text": "this?"}]
    message = await receive(sim, run_adapter, msgtype="richText", content={"richText": rich})
    assert message.kind == MessageKind.RICH_TEXT and message.text == "What is this?"
    assert [a.size for a in message.attachments] == [len(PNG)]


async def test_audio_uses_the_recognition_and_video_is_left_to_the_router(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    audio = await receive(sim, run_adapter, msgtype="audio", text="明天天气怎么样")
    assert audio.kind == MessageKind.AUDIO and audio.text == "明天天气怎么样"
    assert audio.attachments[0].object_name is None, "the recording is not fetched"
