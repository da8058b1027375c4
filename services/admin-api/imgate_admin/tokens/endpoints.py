"""HTTP routes of /api/v1/tokens."""

from fastapi import APIRouter

from imgate_admin.auth import ActorDep
from imgate_admin.deps import SessionDep
from imgate_admin.errors import ErrorBody
from imgate_admin.schemas import IdPath
from imgate_admin.tokens import service
from imgate_admin.tokens.schemas import TokenCreate, TokenCreated, TokenRead

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenCreated)
async def create_token(body: TokenCreate, session: SessionDep, actor: ActorDep) -> TokenCreated:
    """Create a bearer token; the response is the only time the token is shown."""
    token, clear = await service.create_token(session, actor, body)
    return TokenCreated(**TokenRead.from_row(token).model_dump(), token=clear)


@router.get("", response_model=list[TokenRead])
async def list_tokens(session: SessionDep) -> list[TokenRead]:
    return [TokenRead.from_row(t) for t in await service.list_tokens(session)]


@router.delete("/{token_id}", status_code=204, responses={404: {"model": ErrorBody}})
async def revoke_token(token_id: IdPath, session: SessionDep, actor: ActorDep) -> None:
    """Revoke a token: requests carrying it are refused from now on."""
    await service.revoke_token(session, actor, token_id)
