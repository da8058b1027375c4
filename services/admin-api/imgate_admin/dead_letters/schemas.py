"""Response bodies of /api/v1/dead-letters."""

import base64

from pydantic import BaseModel

from imgate_admin.schemas import UtcDatetime
from imgate_common.errors import FailureCategory
from imgate_common.messages import DeadLetter

# A list shows the start of each body; the letter itself shows all of it.
PREVIEW_CHARS = 500


def _text(data_b64: str) -> str:
    return base64.b64decode(data_b64).decode("utf-8", "replace")


class DeadLetterRead(BaseModel):
    seq: int  # its place in the DEAD_LETTERS stream: the id to replay or discard it by
    consumer: str
    stream: str
    subject: str
    reason: str
    error_type: str
    category: FailureCategory
    permanent: bool  # False: a dependency stayed down through every try
    deliveries: int
    channel_id: int | None
    run_id: str | None
    failed_at: UtcDatetime
    body: str

    @classmethod
    def from_letter(cls, seq: int, letter: DeadLetter, *, whole: bool = False) -> "DeadLetterRead":
        body = _text(letter.data_b64)
        return cls(
            seq=seq,
            consumer=letter.consumer,
            stream=letter.stream,
            subject=letter.subject,
            reason=letter.reason,
            error_type=letter.error_type,
            category=letter.category,
            permanent=letter.permanent,
            deliveries=letter.deliveries,
            channel_id=letter.channel_id,
            run_id=letter.run_id,
            failed_at=letter.failed_at,
            body=body if whole else body[:PREVIEW_CHARS],
        )


class DeadLetterDetail(DeadLetterRead):
    headers: dict[str, str]


class Replayed(BaseModel):
    seq: int
    subject: str
    stream: str
    msg_id: str  # the fresh dedup id it was published under
    # A user's message or run request: which replay of it this is, and the run that answers it
    # (a new card); None for a message published again as it was.
    replay: int | None = None
    run_id: str | None = None
    # A run request's place in its conversation's queue: start, queued, or finished (replayed
    # and answered already).
    admission: str | None = None
