"""Reading dead letters from JetStream, replaying them to where they came from, discarding them."""

import base64
import uuid
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError as StreamMessageNotFound
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.audit.service import record_action
from imgate_common.bus import DEAD_LETTERS_STREAM, MSG_ID_HEADER
from imgate_common.errors import NotFound
from imgate_common.messages import DeadLetter

# Headers JetStream sets or checks per publish; a replay gets fresh ones.
_PER_PUBLISH = {MSG_ID_HEADER, "Nats-Expected-Stream", "Nats-Expected-Last-Sequence"}


@dataclass(frozen=True)
class StoredLetter:
    seq: int
    letter: DeadLetter


async def _get(js: JetStreamContext, seq: int) -> StoredLetter | None:
    try:
        raw = await js.get_msg(DEAD_LETTERS_STREAM, seq)
    except StreamMessageNotFound:
        return None
    return StoredLetter(seq, DeadLetter.model_validate_json(raw.data or b""))


async def list_letters(
    js: JetStreamContext, *, channel_id: int | None, limit: int, offset: int
) -> tuple[list[StoredLetter], int]:
    """Newest first, and how many the stream holds (all channels)."""
    state = (await js.stream_info(DEAD_LETTERS_STREAM)).state
    found: list[StoredLetter] = []
    skipped = 0
    seq = state.last_seq
    while seq >= max(state.first_seq, 1) and len(found) < limit:
        stored = await _get(js, seq)
        seq -= 1
        if stored is None or (channel_id is not None and stored.letter.channel_id != channel_id):
            continue
        if skipped < offset:
            skipped += 1
            continue
        found.append(stored)
    return found, state.messages


async def get_letter(js: JetStreamContext, seq: int) -> StoredLetter:
    stored = await _get(js, seq)
    if stored is None:
        raise NotFound(f"no dead letter {seq}")
    return stored


async def replay(
    js: JetStreamContext, session: AsyncSession, actor: str, seq: int
) -> tuple[StoredLetter, str]:
    """Publish the message again, as it was, to its subject and stream under a fresh dedup id
    (the old one may still be in the stream's window); audited; the letter is then removed."""
    stored = await get_letter(js, seq)
    letter = stored.letter
    msg_id = f"replay:{uuid.uuid4().hex}"
    headers = {k: v for k, v in letter.headers.items() if k not in _PER_PUBLISH}
    headers[MSG_ID_HEADER] = msg_id
    await js.publish(letter.subject, base64.b64decode(letter.data_b64), stream=letter.stream, headers=headers)
    record_action(
        session,
        actor,
        "dead_letter.replay",
        f"dead_letter:{seq}",
        {
            "subject": letter.subject,
            "stream": letter.stream,
            "consumer": letter.consumer,
            "channel_id": letter.channel_id,
            "run_id": letter.run_id,
            "msg_id": msg_id,
        },
    )
    await session.commit()
    await _delete(js, seq)
    return stored, msg_id


async def discard(js: JetStreamContext, session: AsyncSession, actor: str, seq: int) -> None:
    stored = await get_letter(js, seq)
    record_action(
        session,
        actor,
        "dead_letter.discard",
        f"dead_letter:{seq}",
        {
            "subject": stored.letter.subject,
            "channel_id": stored.letter.channel_id,
            "run_id": stored.letter.run_id,
        },
    )
    await session.commit()
    await _delete(js, seq)


async def _delete(js: JetStreamContext, seq: int) -> None:
    try:
        await js.delete_msg(DEAD_LETTERS_STREAM, seq)
    except StreamMessageNotFound:
        pass  # another request removed it meanwhile
