"""Reading dead letters from JetStream, replaying them to where they came from, discarding them.

A replay is a new attempt with its own identity: the user's message (or its run request) goes
back with the next replay number, which gives it a run id of its own, so the user gets a new
answer (a new card) instead of one the renderer and the conversation queue remember as over.
"""

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError as StreamMessageNotFound
from pydantic import ValidationError
from redis.asyncio import Redis
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.audit.service import record_action
from imgate_common.bus import (
    DEAD_LETTERS_STREAM,
    INBOUND_STREAM,
    MSG_ID_HEADER,
    REPLIES_STREAM,
    RUNS_STREAM,
    reply_subject,
    run_subject,
)
from imgate_common.conversation_queue import Admission, ConversationQueue
from imgate_common.errors import Conflict, NotFound
from imgate_common.messages import (
    MAX_REPLAYS,
    RUN_NAMESPACE,
    DeadLetter,
    InboundMessage,
    RunQueued,
    RunRequest,
    run_id_for,
    utcnow,
)
from imgate_common.publish import jetstream_publisher
from imgate_common.settings import CommonSettings

# Headers JetStream sets or checks per publish; a replay gets fresh ones.
_PER_PUBLISH = {MSG_ID_HEADER, "Nats-Expected-Stream", "Nats-Expected-Last-Sequence"}
# How many runs may wait in a conversation when a replayed run joins it (the router's default).
REPLAY_QUEUE_DEPTH = 5


@dataclass(frozen=True)
class StoredLetter:
    seq: int
    letter: DeadLetter


@dataclass(frozen=True)
class ReplayOutcome:
    msg_id: str  # the dedup id it was published under ("" when nothing was published)
    replay: int | None = None  # the replay number; None: republished as it was
    run_id: str | None = None  # the run that answers the replay
    admission: str | None = None  # a run request's place in its conversation's queue


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
    js: JetStreamContext,
    redis: Redis,
    settings: CommonSettings,
    session: AsyncSession,
    actor: str,
    seq: int,
) -> tuple[StoredLetter, ReplayOutcome]:
    """Send the message again as a new attempt (audited); the letter is then removed.

    - A user's message (IM_INBOUND) goes back to its partition with the next replay number:
      the router routes it again under a new run id, through the conversation's queue.
    - A run request (AGENT_RUNS) gets the next replay number and a new run id derived from the
      same user message, and is admitted to its conversation's queue as the router would: it
      starts now or waits its turn, and answers the stored user message on a new card.
    - Anything else (a body that does not parse, another stream) is published as it was under a
      fresh dedup id.
    """
    stored = await get_letter(js, seq)
    letter = stored.letter
    headers = {k: v for k, v in letter.headers.items() if k not in _PER_PUBLISH}
    body = base64.b64decode(letter.data_b64)
    outcome: ReplayOutcome | None = None
    if letter.stream == INBOUND_STREAM:
        outcome = await _replay_message(js, letter.subject, body, headers)
    elif letter.stream == RUNS_STREAM:
        outcome = await _replay_run(js, redis, settings, body)
    if outcome is None:
        outcome = ReplayOutcome(f"replay:{uuid.uuid4().hex}")
        headers[MSG_ID_HEADER] = outcome.msg_id
        await js.publish(letter.subject, body, stream=letter.stream, headers=headers)
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
            "msg_id": outcome.msg_id,
            "replay": outcome.replay,
            "replay_run_id": outcome.run_id,
            "admission": outcome.admission,
        },
    )
    await session.commit()
    await _delete(js, seq)
    return stored, outcome


def _next_replay(current: int) -> int:
    if current >= MAX_REPLAYS:
        raise Conflict(
            f"this message was replayed {current} times already (at most {MAX_REPLAYS}); discard it"
        )
    return current + 1


async def _replay_message(
    js: JetStreamContext, subject: str, body: bytes, headers: dict[str, str]
) -> ReplayOutcome | None:
    try:
        message = InboundMessage.model_validate_json(body)
        fields: dict[str, Any] = json.loads(body)
    except (ValidationError, ValueError):
        return None
    replay = _next_replay(message.replay)
    fields["replay"] = replay  # the rest of the body stays exactly as it was
    # The same replay of the same message twice (two clicks) is one publish.
    msg_id = f"{message.platform}:{message.channel_id}:{message.message_id}:replay:{replay}"
    headers[MSG_ID_HEADER] = msg_id
    body = json.dumps(fields, ensure_ascii=False).encode()
    await js.publish(subject, body, stream=INBOUND_STREAM, headers=headers)
    run_id = run_id_for(message.platform, message.channel_id, message.message_id, replay)
    return ReplayOutcome(msg_id, replay, run_id)


def replayed_run_id(request: RunRequest, replay: int) -> str:
    """The run id of a run request's replay: the user message's run id for that replay number
    (as if the message itself had been replayed), or, for a run id made some other way, one
    derived from it."""
    target = request.target
    message_id = target.inbound_message_id
    if message_id and request.run_id == run_id_for(
        target.platform, request.channel_id, message_id, request.replay
    ):
        return run_id_for(target.platform, request.channel_id, message_id, replay)
    return str(uuid.uuid5(RUN_NAMESPACE, f"{request.run_id}:replay:{replay}"))


async def _replay_run(
    js: JetStreamContext, redis: Redis, settings: CommonSettings, body: bytes
) -> ReplayOutcome | None:
    """The run continues its message's trace (`trace_context`), not the letter's headers."""
    try:
        old = RunRequest.model_validate_json(body)
    except ValidationError:
        return None
    replay = _next_replay(old.replay)
    request = old.model_copy(
        update={"run_id": replayed_run_id(old, replay), "replay": replay, "requested_at": utcnow()}
    )
    publish = jetstream_publisher(js)

    async def publish_run(run: RunRequest) -> None:
        # The run id is the dedup id, as whoever hands a conversation's turn on publishes it.
        await publish(run_subject(run.channel_id), RUNS_STREAM, run, run.run_id)

    queue = ConversationQueue(redis, settings.redis_prefix, settings.conversation_active_ttl_s)
    admitted = await queue.admit(request, REPLAY_QUEUE_DEPTH)
    if admitted.admission == Admission.FULL:
        raise Conflict(
            f"conversation {request.conversation_id} has {REPLAY_QUEUE_DEPTH} runs waiting; replay it later"
        )
    if admitted.admission == Admission.START:
        await publish_run(request)
    elif admitted.admission == Admission.QUEUED:
        queued = RunQueued.of(request, admitted.position)
        subject = reply_subject(request.channel_id, request.run_id)
        await publish(subject, REPLIES_STREAM, queued, f"{request.run_id}:queued")
        # The conversation's lock may have expired with runs waiting: start the first of them.
        await queue.promote(request.conversation_id, publish_run)
    # FINISHED: this replay was admitted before (a second click) and is answered already.
    return ReplayOutcome(request.run_id, replay, request.run_id, admitted.admission.value)


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
