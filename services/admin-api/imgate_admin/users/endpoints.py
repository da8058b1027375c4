"""HTTP routes of /api/v1/users."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from imgate_admin.auth import ActorDep
from imgate_admin.deps import ResourcesDep, SessionDep
from imgate_admin.errors import ErrorBody, Responses
from imgate_admin.schemas import TOTAL_COUNT_HEADER, IdPath, Limit, Offset, QueryText
from imgate_admin.users import service
from imgate_admin.users.schemas import IdentityLink, IdentityRead, UserCreate, UserRead
from imgate_common.messages import ConfigKind

router = APIRouter(prefix="/users", tags=["users"])

NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No such user, or no such identity of it"}}


@router.get("", response_model=list[UserRead])
async def list_users(
    session: SessionDep,
    response: Response,
    q: Annotated[QueryText | None, Query(description="part of a name, e-mail, IM user id or nick")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[UserRead]:
    """Users by id with their IM identities; `X-Total-Count` holds the number that match."""
    users, total = await service.list_users(session, q, limit, offset)
    identities = await service.identities_of(session, [u.id for u in users if u.id is not None])
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return [UserRead.from_row(u, identities.get(u.id or 0, [])) for u in users]


@router.post("", status_code=201, response_model=UserRead, responses={409: {"model": ErrorBody}})
async def create_user(body: UserCreate, session: SessionDep, actor: ActorDep) -> UserRead:
    """Create a user by hand, to link IM identities to."""
    user = await service.create_user(session, actor, body)
    return UserRead.from_row(user, [])


@router.get("/{user_id}", response_model=UserRead, responses=NOT_FOUND)
async def get_user(user_id: IdPath, session: SessionDep) -> UserRead:
    user = await service.get_user(session, user_id)
    identities = await service.identities_of(session, [user_id])
    return UserRead.from_row(user, identities.get(user_id, []))


@router.post(
    "/{user_id}/identities",
    status_code=201,
    response_model=IdentityRead,
    responses={
        **NOT_FOUND,
        200: {"model": IdentityRead, "description": "The identity existed and now points at this user"},
        409: {"model": ErrorBody},
    },
)
async def link_identity(
    user_id: IdPath,
    body: IdentityLink,
    session: SessionDep,
    response: Response,
    actor: ActorDep,
    resources: ResourcesDep,
) -> IdentityRead:
    """Link an IM identity to this user: 201 when it is new, 200 when it moved from another user."""
    identity, created = await service.link_identity(session, actor, user_id, body)
    await resources.control.announce(ConfigKind.IDENTITY, identity.id)  # routers cache links
    if not created:
        response.status_code = 200
    return IdentityRead.from_row(identity)


@router.delete("/{user_id}/identities/{identity_id}", status_code=204, responses=NOT_FOUND)
async def unlink_identity(
    user_id: IdPath, identity_id: IdPath, session: SessionDep, actor: ActorDep, resources: ResourcesDep
) -> None:
    await service.unlink_identity(session, actor, user_id, identity_id)
    await resources.control.announce(ConfigKind.IDENTITY, identity_id)
