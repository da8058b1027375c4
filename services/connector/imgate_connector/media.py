"""Media a user sent (pictures, files): fetched with limits, kept in the bus's object store.

The bytes go to a JetStream object store bucket (`imgate-media`, one day TTL), never into the
bus message: the message carries the object's name, size, type and digest, so every service can
fetch it and the inbound stream stays small. A download is streamed to a spooled temporary file
(memory up to 1 MB, disk beyond) and aborted past the size limit or the timeout, so a large
file never sits in memory. Small text files are also put into the message text for the model.
"""

import asyncio
import hashlib
import tempfile
from dataclasses import dataclass

import httpx
import structlog
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.object_store import ObjectStore

from imgate_common.bus import MEDIA_BUCKET
from imgate_common.messages import Attachment

log = structlog.get_logger()

# Downloads stay in memory up to this size, then spill to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024


class MediaTooLarge(Exception):
    """The file is bigger than the connector accepts."""


@dataclass(frozen=True)
class StoredMedia:
    object_name: str
    size: int
    content_type: str | None
    sha256: str
    head: bytes  # the first bytes (up to the inline limit), for text files shown to the model


class MediaStore:
    def __init__(self, js: JetStreamContext, *, ttl_s: float, max_bytes: int, replicas: int = 1) -> None:
        self._js = js
        self._ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._replicas = replicas
        self._store: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def _bucket(self) -> ObjectStore:
        async with self._lock:
            if self._store is None:
                try:
                    self._store = await self._js.object_store(MEDIA_BUCKET)
                except BucketNotFoundError:
                    self._store = await self._js.create_object_store(
                        MEDIA_BUCKET,
                        ObjectStoreConfig(
                            description="media users sent to bots, fetched by the connector",
                            ttl=self._ttl_s,
                            storage=StorageType.FILE,
                            replicas=self._replicas,
                        ),
                    )
            return self._store

    async def fetch(
        self,
        http: httpx.AsyncClient,
        url: str,
        object_name: str,
        *,
        timeout_s: float,
        head_bytes: int = 0,
    ) -> StoredMedia:
        """Download `url` into the store as `object_name`; raises `MediaTooLarge`, `TimeoutError`
        or `httpx.HTTPError`."""
        digest = hashlib.sha256()
        head = bytearray()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
            async with asyncio.timeout(timeout_s):
                async with http.stream("GET", url) as response:
                    response.raise_for_status()
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise MediaTooLarge(f"{declared} bytes")
                    content_type = response.headers.get("content-type")
                    async for chunk in response.aiter_bytes(CHUNK_BYTES):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise MediaTooLarge(f"more than {self.max_bytes} bytes")
                        digest.update(chunk)
                        if len(head) < head_bytes:
                            head += chunk[: head_bytes - len(head)]
                        if size > SPOOL_MEMORY_BYTES:  # spilled to disk: write off the event loop
                            await asyncio.to_thread(spool.write, chunk)
                        else:
                            spool.write(chunk)
                spool.seek(0)
                store = await self._bucket()
                await store.put(object_name, spool, ObjectMeta(name=object_name, description=content_type))  # type: ignore[arg-type]
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
    textual = (attachment.content_type or "").startswith("text/") or any(
        name.lower().endswith(ext) for ext in TEXT_EXTENSIONS
    )
    if not textual or head is None or attachment.size is None or attachment.size > inline_max:
        return line
    text = _as_text(head)
    return f"{line}\n\n{text.strip()}" if text is not None and text.strip() else line
