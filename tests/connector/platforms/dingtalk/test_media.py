"""Pictures and files: fetched through messageFiles/download into the bus's object store, with
limits; small text files are also given to the model as text."""

import json
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy

from imgate_common.bus import MEDIA_STREAM
from imgate_common.messages import InboundMessage, MessageKind
from imgate_connector.media import STORE_FULL, MediaStore
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


async def receive(
    sim: Sim,
    run_adapter: Start,
    *,
    vision: object = None,
    media: MediaStore | None = None,
    language: str = "zh-CN",
    **message: object,
) -> InboundMessage:
    got: list[InboundMessage] = []

    async def sink(inbound: InboundMessage) -> None:
        got.append(inbound)

    adapter, _ = await run_adapter(sink, media_inline_text_max_bytes=1024, language=language)
    if vision is not None:
        adapter.resources.vision = vision  # type: ignore[assignment]
    if media is not None:
        adapter.resources.media = media
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
    assert message.attachments[0].object_name is None, "read into the text, not stored: nobody reads it"


async def test_a_big_file_is_named_but_not_inlined(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    code = await upload(sim, b"x" * 4000, "text/plain", "big.log")
    message = await receive(
        sim, run_adapter, msgtype="file", content={"downloadCode": code, "fileName": "big.log"}
    )
    assert message.text == "[file] big.log (3.9 KB)"


async def test_a_file_that_is_not_text_is_named_not_downloaded(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    code = await upload(sim, b"\x00" * (65 * 1024), "application/pdf", "huge.pdf")
    message = await receive(
        sim, run_adapter, msgtype="file", content={"downloadCode": code, "fileName": "huge.pdf"}
    )
    [attachment] = message.attachments
    assert attachment.object_name is None and attachment.size is None
    assert message.text == "[file] huge.pdf"


async def test_a_picture_over_the_limit_is_refused_and_the_message_still_arrives(
    sim: Sim, run_adapter: Start, media_store: MediaStore
) -> None:
    code = await upload(sim, PNG * 8, "image/png")
    message = await receive(sim, run_adapter, msgtype="picture", content={"downloadCode": code})
    [attachment] = message.attachments
    assert attachment.object_name is None and attachment.error and "too large" in attachment.error


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


class NoVision:
    """The channel's agent takes no pictures."""

    async def supports_images(self, agent_id: int | None) -> bool:
        return False


async def test_a_picture_is_not_fetched_when_the_agent_cannot_see_it(
    sim: Sim, run_adapter: Start, media_store: MediaStore, bus: tuple[NATS, JetStreamContext]
) -> None:
    _, js = bus
    await media_store.ensure()
    before = (await js.stream_info(MEDIA_STREAM)).state.messages
    code = await upload(sim, PNG, "image/png")
    message = await receive(
        sim, run_adapter, msgtype="picture", content={"downloadCode": code}, vision=NoVision()
    )
    [image] = message.attachments
    assert image.object_name is None and image.error is None and image.download_code == code
    assert (await js.stream_info(MEDIA_STREAM)).state.messages == before


async def test_a_full_media_bucket_skips_the_picture_not_the_message(
    sim: Sim, run_adapter: Start, bus: tuple[NATS, JetStreamContext]
) -> None:
    _, js = bus
    full = MediaStore(js, ttl_s=600, max_bytes=64 * 1024, bucket_max_bytes=1)
    code = await upload(sim, PNG, "image/png")
    message = await receive(
        sim, run_adapter, msgtype="picture", content={"downloadCode": code}, media=full, language="en"
    )
    [image] = message.attachments
    assert image.object_name is None and image.error == STORE_FULL
    config = (await js.stream_info(MEDIA_STREAM)).config
    assert config.max_bytes == 1 and config.discard == DiscardPolicy.NEW

    async def told() -> bool:
        said = json.dumps(await sim.get("conversations"), ensure_ascii=False)
        return "file storage is full" in said

    await until(told)
    await MediaStore(js, ttl_s=600, max_bytes=64 * 1024).ensure()  # cap lifted again
