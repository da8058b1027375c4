"""Bearer-token authentication for the /api routes: the bootstrap ADMIN_TOKEN or a stored API token."""

import hashlib
import hmac
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import col, select

from imgate_admin.deps import ResourcesDep
from imgate_admin.errors import Unauthorized
from imgate_common.db.models import ApiToken

log = structlog.get_logger()

# Who the audit log names for a change made with the ADMIN_TOKEN of the installation.
BOOTSTRAP_ACTOR = "admin"

# auto_error=False: a missing header must produce our error envelope, not FastAPI's default.
bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKEN, or a token created through /api/v1/tokens")


def token_digest(token: str) -> str:
    """What is stored of an API token. Tokens are 256 random bits, so a fast hash is enough: there
    is no dictionary to try, and a slow hash would only slow every request."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_actor(token: ApiToken) -> str:
    return f"token:{token.name}#{token.id}"


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    resources: ResourcesDep,
) -> str:
    """The authenticated actor, for the audit log; 401 otherwise."""
    if credentials is None:
        log.info("auth_rejected", reason="missing_bearer", path=request.url.path)
        raise Unauthorized("missing bearer token")
    presented = credentials.credentials
    expected = resources.settings.token.get_secret_value()
    # compare_digest takes time independent of where the strings differ.
    if hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode()):
        return BOOTSTRAP_ACTOR
    async with resources.sessions() as session:
        query = select(ApiToken).where(
            col(ApiToken.token_hash) == token_digest(presented), col(ApiToken.revoked_at).is_(None)
        )
        token = (await session.exec(query)).first()
    if token is None:
        log.info("auth_rejected", reason="wrong_token", path=request.url.path)
        raise Unauthorized("invalid bearer token")
    return token_actor(token)


ActorDep = Annotated[str, Depends(require_token)]
