"""Token use cases: the clear token exists only in the create response."""

import secrets
from collections.abc import Sequence

import structlog
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.audit.service import record_action
from imgate_admin.auth import token_digest
from imgate_admin.tokens.schemas import TokenCreate
from imgate_common.db.models import ApiToken, utcnow
from imgate_common.errors import NotFound

log = structlog.get_logger()

TOKEN_PREFIX = "imgt_"  # recognisable in a secret scanner's rules and in a leaked paste
PREFIX_SHOWN = 12


async def create_token(session: AsyncSession, actor: str, body: TokenCreate) -> tuple[ApiToken, str]:
    clear = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=body.name, token_hash=token_digest(clear), prefix=clear[:PREFIX_SHOWN], created_by=actor
    )
    session.add(token)
    await session.flush()
    record_action(session, actor, "token.create", f"token:{token.id}", {"name": token.name})
    await session.commit()
    log.info("token_created", id=token.id, name=token.name)
    return token, clear


async def list_tokens(session: AsyncSession) -> Sequence[ApiToken]:
    return (await session.exec(select(ApiToken).order_by(col(ApiToken.id)))).all()


async def revoke_token(session: AsyncSession, actor: str, token_id: int) -> ApiToken:
    token = await session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} does not exist")
    if token.revoked_at is None:  # revoking twice is not an error: the token is gone either way
        token.revoked_at = utcnow()
        session.add(token)
        record_action(session, actor, "token.revoke", f"token:{token.id}", {"name": token.name})
        await session.commit()
        log.info("token_revoked", id=token.id)
    return token
