"""User and identity use cases over the database."""

from collections import defaultdict
from collections.abc import Sequence

import structlog
from sqlalchemy import func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.audit.service import record_action
from imgate_admin.users.schemas import IdentityLink, UserCreate
from imgate_common.db.models import ImIdentity, User
from imgate_common.errors import Conflict, NotFound

log = structlog.get_logger()

MANUAL_SOURCE = "manual"  # users made by an admin, not by a mapper on first contact


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def identities_of(session: AsyncSession, user_ids: Sequence[int]) -> dict[int, list[ImIdentity]]:
    found: dict[int, list[ImIdentity]] = defaultdict(list)
    if user_ids:
        query = select(ImIdentity).where(col(ImIdentity.user_id).in_(user_ids)).order_by(col(ImIdentity.id))
        for identity in (await session.exec(query)).all():
            found[identity.user_id].append(identity)
    return found


async def list_users(
    session: AsyncSession, q: str | None, limit: int, offset: int
) -> tuple[Sequence[User], int]:
    """Users whose name, e-mail or display name, or one of whose IM identities, contains `q`."""
    query = select(User)
    if q:
        pattern = _like(q)
        identity_match = select(ImIdentity.user_id).where(
            or_(
                col(ImIdentity.platform_user_id).ilike(pattern, escape="\\"),
                col(ImIdentity.nick).ilike(pattern, escape="\\"),
            )
        )
        query = query.where(
            or_(
                col(User.username).ilike(pattern, escape="\\"),
                col(User.email).ilike(pattern, escape="\\"),
                col(User.display_name).ilike(pattern, escape="\\"),
                col(User.id).in_(identity_match),
            )
        )
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    users = (await session.exec(query.order_by(col(User.id)).limit(limit).offset(offset))).all()
    return users, int(total)


async def get_user(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    return user


async def _username_taken(session: AsyncSession, username: str) -> bool:
    return (await session.exec(select(User.id).where(col(User.username) == username))).first() is not None


async def create_user(session: AsyncSession, actor: str, body: UserCreate) -> User:
    if await _username_taken(session, body.username):
        raise Conflict(f"a user named {body.username!r} already exists")
    user = User(
        username=body.username, email=body.email, display_name=body.display_name, auth_source=MANUAL_SOURCE
    )
    session.add(user)
    try:
        await session.flush()
        record_action(session, actor, "user.create", f"user:{user.id}", {"username": user.username})
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"a user named {body.username!r} already exists") from None
    log.info("user_created_by_admin", user_id=user.id)
    return user


async def _find_identity(session: AsyncSession, body: IdentityLink) -> ImIdentity | None:
    query = select(ImIdentity).where(
        col(ImIdentity.platform) == body.platform,
        col(ImIdentity.tenant_id) == body.tenant_id,
        col(ImIdentity.platform_user_id) == body.platform_user_id,
    )
    return (await session.exec(query)).first()


async def link_identity(
    session: AsyncSession, actor: str, user_id: int, body: IdentityLink
) -> tuple[ImIdentity, bool]:
    """Point an IM identity at this user: a new one is created, an existing one (say, the user the
    router made on first contact) is moved. Returns the identity and whether it was created."""
    await get_user(session, user_id)
    identity = await _find_identity(session, body)
    created = identity is None
    previous = None if identity is None else identity.user_id
    if identity is None:
        identity = ImIdentity(
            platform=body.platform,
            tenant_id=body.tenant_id,
            platform_user_id=body.platform_user_id,
            user_id=user_id,
            nick=body.nick,
        )
    else:
        identity.user_id = user_id
        if body.nick is not None:
            identity.nick = body.nick
    session.add(identity)
    try:
        await session.flush()
        record_action(
            session,
            actor,
            "identity.link",
            f"user:{user_id}",
            {
                "identity_id": identity.id,
                "platform": identity.platform,
                "tenant_id": identity.tenant_id,
                "platform_user_id": identity.platform_user_id,
                "previous_user_id": previous,
            },
        )
        await session.commit()
    except IntegrityError:
        # The router created this identity a moment ago (or the user was deleted): try again.
        await session.rollback()
        raise Conflict("the identity changed while linking it; try again") from None
    log.info("identity_linked", identity_id=identity.id, user_id=user_id, previous_user_id=previous)
    return identity, created


async def unlink_identity(session: AsyncSession, actor: str, user_id: int, identity_id: int) -> None:
    """Remove the link; the next message from that identity is mapped afresh (by the channel's
    user mapping), as at first contact."""
    await get_user(session, user_id)
    identity = await session.get(ImIdentity, identity_id)
    if identity is None or identity.user_id != user_id:
        raise NotFound(f"user {user_id} has no identity {identity_id}")
    await session.delete(identity)
    record_action(
        session,
        actor,
        "identity.unlink",
        f"user:{user_id}",
        {
            "identity_id": identity_id,
            "platform": identity.platform,
            "platform_user_id": identity.platform_user_id,
        },
    )
    await session.commit()
    log.info("identity_unlinked", identity_id=identity_id, user_id=user_id)
