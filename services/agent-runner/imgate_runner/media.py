"""Pictures the user sent, read from the media bucket for vision models."""

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from imgate_common.bus import MEDIA_BUCKET, MEDIA_IMAGE_MAX_BYTES
from imgate_common.messages import Attachment, MessageKind
from imgate_runner.providers.base import ImageInput

log = structlog.get_logger()

# Larger pictures are not sent to the model (the connector does not fetch them either).
MAX_IMAGE_BYTES = MEDIA_IMAGE_MAX_BYTES


class MediaReader:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def images(self, attachments: list[Attachment]) -> list[ImageInput]:
        wanted = [a for a in attachments if a.kind == MessageKind.IMAGE and a.object_name]
        if not wanted:
            return []
        try:
            bucket = await self._js.object_store(MEDIA_BUCKET)
        except NotFoundError:
            log.warning("media_bucket_missing")
            return []
        images = []
        for attachment in wanted:
            if (attachment.size or 0) > MAX_IMAGE_BYTES:
                continue
            try:
                result = await bucket.get(str(attachment.object_name))
            except NotFoundError:
                log.warning("media_object_missing", object_name=attachment.object_name)
                continue
            if result.data:
                images.append(ImageInput(attachment.content_type or "image/png", bytes(result.data)))
        return images
