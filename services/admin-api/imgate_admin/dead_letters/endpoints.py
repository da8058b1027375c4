"""HTTP routes of /api/v1/dead-letters."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from nats.js import JetStreamContext

from imgate_admin.auth import ActorDep
from imgate_admin.dead_letters import service
from imgate_admin.dead_letters.schemas import DeadLetterDetail, DeadLetterRead, Replayed
from imgate_admin.deps import ResourcesDep, SessionDep
from imgate_admin.errors import ErrorBody, Responses
from imgate_admin.schemas import MAX_ID, TOTAL_COUNT_HEADER, Limit, Offset

router = APIRouter(prefix="/dead-letters", tags=["dead-letters"])

NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No dead letter has this number"}}
# JetStream numbers messages with 64-bit integers; JSON carries integers exactly up to 2**53.
MAX_SEQ = 2**53
Seq = Annotated[int, Path(ge=1, le=MAX_SEQ, description="the letter's sequence in the DEAD_LETTERS stream")]


def _js(resources: ResourcesDep) -> JetStreamContext:
    return resources.nc.jetstream()


@router.get("", response_model=list[DeadLetterRead])
async def list_dead_letters(
    resources: ResourcesDep,
    response: Response,
    channel_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[DeadLetterRead]:
    """Newest first, bodies cut short; `X-Total-Count` holds how many the stream keeps."""
    letters, total = await service.list_letters(
        _js(resources), channel_id=channel_id, limit=limit, offset=offset
    )
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return [DeadLetterRead.from_letter(s.seq, s.letter) for s in letters]


@router.get("/{seq}", response_model=DeadLetterDetail, responses=NOT_FOUND)
async def get_dead_letter(seq: Seq, resources: ResourcesDep) -> DeadLetterDetail:
    """The whole message as the consumer saw it: subject, headers, body, why it was given up."""
    stored = await service.get_letter(_js(resources), seq)
    read = DeadLetterRead.from_letter(stored.seq, stored.letter, whole=True)
    return DeadLetterDetail(**read.model_dump(), headers=stored.letter.headers)


REPLAY_REFUSED: Responses = {
    **NOT_FOUND,
    409: {
        "model": ErrorBody,
        "description": "Replayed too often already, or the conversation's queue is full (the letter is kept)",
    },
}


@router.post("/{seq}/replay", response_model=Replayed, responses=REPLAY_REFUSED)
async def replay_dead_letter(
    seq: Seq, resources: ResourcesDep, session: SessionDep, actor: ActorDep
) -> Replayed:
    """Send the message again as a new attempt (fix the cause first): a user's message or a run
    request gets the next replay number and so a run id of its own, and the user a new answer;
    the letter is removed."""
    stored, outcome = await service.replay(
        _js(resources), resources.redis, resources.settings, session, actor, seq
    )
    return Replayed(
        seq=seq,
        subject=stored.letter.subject,
        stream=stored.letter.stream,
        msg_id=outcome.msg_id,
        replay=outcome.replay,
        run_id=outcome.run_id,
        admission=outcome.admission,
    )


@router.delete("/{seq}", status_code=204, responses=NOT_FOUND)
async def discard_dead_letter(
    seq: Seq, resources: ResourcesDep, session: SessionDep, actor: ActorDep
) -> None:
    await service.discard(_js(resources), session, actor, seq)
