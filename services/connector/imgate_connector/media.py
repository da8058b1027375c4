"""Media a user sent (pictures, files): fetched with limits, only when a model can use them.

Pictures go to a JetStream object store bucket (`imgate-media`, one day TTL), never into the
bus message: the message carries the object's name, size, type and digest, so every service can
fetch it and the inbound stream stays small. A download is streamed to a spooled temporary file
(memory up to 1 MB, disk beyond) and aborted past the size limit or the timeout, so a large
file never sits in memory.

What is fetched at all (nothing one user sends can fill the bus's store):
- a picture only when the channel's default agent takes images (`Agent.supports_images`), and
  only up to the size a model is sent (`MEDIA_IMAGE_MAX_BYTES`);
- of a file, only the first bytes of a small text file, put into the message text for the
  model; files are not stored (no service reads them), other files are named, not downloaded;
- the bucket has a byte cap of its own and refuses new objects when full (DiscardPolicy.NEW,
  so the pictures of runs still waiting are never dropped): the picture is skipped, the
  message is published all the same and the sender is told the file could not be taken.
"""

import asyncio
import hashlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, ServiceUnavailableError
from nats.js.object_store import ObjectStore
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import MEDIA_BUCKET, MEDIA_IMAGE_MAX_BYTES, MEDIA_STREAM
from imgate_common.db.models import Agent
from imgate_common.messages import Attachment, InboundMessage, MessageKind

log = structlog.get_logger()

# Downloads stay in memory up to this size, then spill to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024


class MediaTooLarge(Exception):
    """The file is bigger than the connector accepts."""


class MediaStoreFull(Exception):
    """The media bucket is at its byte cap: the object is not taken (the message still is)."""


# What an attachment skipped for a full bucket says (the model reads it; the sender is told).
STORE_FULL = "not taken: the media storage is full"


@dataclass(frozen=True)
class StoredMedia:
    object_name: str
    size: int
    content_type: str | None
    sha256: str
    head: bytes  # the first bytes (up to the inline limit), for text files shown to the model


class MediaStore:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        ttl_s: float,
        max_bytes: int,
        replicas: int = 1,
        bucket_max_bytes: int = -1,
    ) -> None:
        self._js = js
        self._ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.bucket_max_bytes = bucket_max_bytes
        self._replicas = replicas
        self._store: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def _bucket(self) -> ObjectStore:
        async with self._lock:
            if self._store is None:
                try:
                    self._store = await self._js.object_store(MEDIA_BUCKET)
                    await self._apply_cap()
                except BucketNotFoundError:
                    self._store = await self._js.create_object_store(
                        MEDIA_BUCKET,
                        ObjectStoreConfig(
                            description="media users sent to bots, fetched by the connector",
                            ttl=self._ttl_s,
                            max_bytes=self.bucket_max_bytes,
                            storage=StorageType.FILE,
                            replicas=self._replicas,
                        ),
                    )
            return self._store

    async def ensure(self) -> None:
        """Create the bucket, or give an existing one the configured cap."""
        await self._bucket()

    async def _apply_cap(self) -> None:
        """A bucket made before the cap (or with another one) takes the configured cap; it
        refuses new objects when full, never drops those that runs may still read."""
        config = (await self._js.stream_info(MEDIA_STREAM)).config
        if config.max_bytes != self.bucket_max_bytes or config.discard != DiscardPolicy.NEW:
            config.max_bytes = self.bucket_max_bytes
            config.discard = DiscardPolicy.NEW
            await self._js.update_stream(config)
            log.info("media_bucket_capped", max_bytes=self.bucket_max_bytes)

    async def _room_for(self, size: int) -> None:
        """Refuse before uploading what the bucket cannot take (JetStream would refuse it chunk
        by chunk; the object store then removes the chunks it took)."""
        if self.bucket_max_bytes <= 0:
            return
        state = (await self._js.stream_info(MEDIA_STREAM)).state
        if state.bytes + size > self.bucket_max_bytes:
            raise MediaStoreFull(f"{state.bytes} of {self.bucket_max_bytes} bytes used")

    async def fetch(
        self,
        http: httpx.AsyncClient,
        url: str,
        object_name: str,
        *,
        timeout_s: float,
        head_bytes: int = 0,
        max_bytes: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> StoredMedia:
        """Download `url` into the store as `object_name`; raises `MediaTooLarge`,
        `MediaStoreFull`, `TimeoutError` or `httpx.HTTPError`."""
        limit = self.max_bytes if max_bytes is None else min(max_bytes, self.max_bytes)
        digest = hashlib.sha256()
        head = bytearray()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
            async with asyncio.timeout(timeout_s):
                async with http.stream("GET", url, headers=headers) as response:
                    response.raise_for_status()
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise MediaTooLarge(f"{declared} bytes")
                    content_type = response.headers.get("content-type")
                    async for chunk in response.aiter_bytes(CHUNK_BYTES):
                        size += len(chunk)
                        if size > limit:
                            raise MediaTooLarge(f"more than {limit} bytes")
                        digest.update(chunk)
                        if len(head) < head_bytes:
                            head += chunk[: head_bytes - len(head)]
                        if size > SPOOL_MEMORY_BYTES:  # spilled to disk: write off the event loop
                            await asyncio.to_thread(spool.write, chunk)
                        else:
                            spool.write(chunk)
                spool.seek(0)
                store = await self._bucket()
                await self._room_for(size)
                try:
                    meta = ObjectMeta(name=object_name, description=content_type)
                    await store.put(object_name, spool, meta)  # type: ignore[arg-type]
                except ServiceUnavailableError as exc:  # another replica filled it meanwhile
                    raise MediaStoreFull(str(exc)) from exc
        log.info("media_stored", object_name=object_name, size=size, content_type=content_type)
        return StoredMedia(object_name, size, content_type, digest.hexdigest(), bytes(head))

    async def read(self, object_name: str) -> bytes:
        """The whole object (tests and small files; services stream big ones themselves)."""
        store = await self._bucket()
        result = await store.get(object_name)
        return result.data or b""


# Files whose bytes the model can read as text, by extension (content types are often generic).
TEXT_EXTENSIONS = frozenset(
    ".txt .md .markdown .csv .tsv .json .jsonl .yaml .yml .xml .html .htm .log .ini .toml .cfg "
    ".py .js .ts .java .go .rs .c .h .cpp .sql .sh .rst".split()
)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1024 / 1024:.1f} MB"


def _as_text(head: bytes) -> str | None:
    for encoding in ("utf-8", "gb18030"):  # Chinese Windows tools still write GBK
        try:
            return head.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def describe_file(attachment: Attachment, head: bytes | None, inline_max: int) -> str:
    """The text a model reads for a file: its name and size, and its content when it is a small
    text file; or why it could not be fetched."""
    name = attachment.name or "file"
    if attachment.error:
        return f"[file] {name} ({attachment.error})"
    line = f"[file] {name}" + (f" ({_size(attachment.size)})" if attachment.size is not None else "")
    small = attachment.size is not None and attachment.size <= inline_max
    if not is_text_file(name, attachment.content_type) or head is None or not small:
        return line
    text = _as_text(head)
    return f"{line}\n\n{text.strip()}" if text is not None and text.strip() else line


async def read_head(
    http: httpx.AsyncClient,
    url: str,
    head_bytes: int,
    *,
    timeout_s: float,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, int | None, str | None]:
    """The first `head_bytes` of `url` (the rest is not downloaded), its declared size and type."""
    head = bytearray()
    async with asyncio.timeout(timeout_s), http.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        declared = response.headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else None
        async for chunk in response.aiter_bytes(CHUNK_BYTES):
            head += chunk[: head_bytes - len(head)]
            if len(head) >= head_bytes:
                break
    if size is None and len(head) < head_bytes:
        size = len(head)  # read to the end
    return bytes(head), size, response.headers.get("content-type")


def is_text_file(name: str | None, content_type: str | None = None) -> bool:
    lowered = (name or "").lower()
    return (content_type or "").startswith("text/") or any(lowered.endswith(e) for e in TEXT_EXTENSIONS)


class AgentVision:
    """Whether a channel's agent takes pictures (`Agent.supports_images`), read from the
    database and kept `ttl_s` (an agent's change reaches the connector that late)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl_s: float = 30.0) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._known: dict[int, tuple[bool, float]] = {}  # agent id → (answer, when); one per agent

    async def supports_images(self, agent_id: int | None) -> bool:
        if agent_id is None:
            return False  # no agent: the router answers "not configured", nothing to show
        known = self._known.get(agent_id)
        if known is not None and time.monotonic() - known[1] < self._ttl_s:
            return known[0]
        try:
            async with self._sessions() as session:
                agent = await session.get(Agent, agent_id)
        except Exception as exc:  # the database away: the last answer, else fetch (capped anyway)
            log.warning("agent_vision_unknown", agent_id=agent_id, error=str(exc)[:200])
            return known[0] if known is not None else True
        answer = bool(agent is not None and agent.supports_images)
        self._known[agent_id] = (answer, time.monotonic())
        return answer


@dataclass(frozen=True)
class MediaSource:
    """Where an attachment downloads from, with the headers its request needs (a platform
    whose media API wants its token, where another hands out a short-lived URL)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)


# Where a platform's attachment can be downloaded from (a short-lived URL, or a `MediaSource`).
DownloadUrl = Callable[[Attachment], Awaitable[str | MediaSource]]


@dataclass(frozen=True)
class MediaPolicy:
    """What the connector fetches of one message's attachments (settings, per channel)."""

    timeout_s: float
    inline_text_max_bytes: int
    images_wanted: bool = True


async def fetch_attachments(
    message: InboundMessage,
    media: MediaStore | None,
    http: httpx.AsyncClient,
    download_url: DownloadUrl,
    policy: MediaPolicy,
    object_prefix: str,
) -> tuple[InboundMessage, bool]:
    """The message with its pictures stored and small text files inlined, and whether any was
    skipped for a full media bucket (the sender is told). A fetch that fails is noted on the
    attachment; the message goes on regardless."""
    wanted = [bool(a.download_code) and _wanted(a, policy) for a in message.attachments]
    if not any(wanted):
        return _described(message, message.attachments, {}, policy), False
    heads: dict[int, bytes] = {}
    skipped = False

    async def fetch(index: int, attachment: Attachment) -> Attachment:
        nonlocal skipped
        if not wanted[index]:
            return attachment
        if media is None:
            return attachment.model_copy(update={"error": "media fetching is off"})
        try:
            source = await download_url(attachment)
            url, headers = (source, None) if isinstance(source, str) else (source.url, source.headers)
            if attachment.kind == MessageKind.FILE:
                head, size, content_type = await read_head(
                    http, url, policy.inline_text_max_bytes + 1, timeout_s=policy.timeout_s, headers=headers
                )
                heads[index] = head
                return attachment.model_copy(update={"size": size, "content_type": content_type})
            stored = await media.fetch(
                http,
                url,
                f"{object_prefix}/{index}",
                timeout_s=policy.timeout_s,
                max_bytes=MEDIA_IMAGE_MAX_BYTES,
                headers=headers,
            )
        except MediaTooLarge as exc:
            return attachment.model_copy(update={"error": f"too large ({exc})"})
        except MediaStoreFull as exc:
            skipped = True
            log.warning("media_store_full", msg_id=message.message_id, error=str(exc)[:200])
            return attachment.model_copy(update={"error": STORE_FULL})
        except Exception as exc:
            log.warning("media_fetch_failed", msg_id=message.message_id, error=str(exc)[:200])
            return attachment.model_copy(update={"error": f"could not be fetched: {type(exc).__name__}"})
        return attachment.model_copy(
            update={
                "object_name": stored.object_name,
                "size": stored.size,
                "content_type": stored.content_type,
                "sha256": stored.sha256,
            }
        )

    attachments = await asyncio.gather(*(fetch(i, a) for i, a in enumerate(message.attachments)))
    return _described(message, list(attachments), heads, policy), skipped


def _wanted(attachment: Attachment, policy: MediaPolicy) -> bool:
    if attachment.kind == MessageKind.IMAGE:
        return policy.images_wanted
    # Of a file only a small text file's text is used: nothing else is downloaded.
    return attachment.kind == MessageKind.FILE and is_text_file(attachment.name)


def _described(
    message: InboundMessage, attachments: list[Attachment], heads: dict[int, bytes], policy: MediaPolicy
) -> InboundMessage:
    text = message.text
    if message.kind == MessageKind.FILE:
        described = [
            describe_file(a, heads.get(i), policy.inline_text_max_bytes)
            for i, a in enumerate(attachments)
            if a.kind == MessageKind.FILE
        ]
        text = "\n\n".join([*described, text] if text else described)
    return message.model_copy(update={"attachments": attachments, "text": text})
