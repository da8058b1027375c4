"""Bearer-token authentication for the /api routes."""

import hmac
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imgate_admin.errors import Unauthorized

log = structlog.get_logger()

# auto_error=False: a missing header must produce our error envelope, not FastAPI's default.
bearer = HTTPBearer(auto_error=False, description="The ADMIN_TOKEN of this installation")


async def require_admin_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    expected: str = request.app.state.settings.token.get_secret_value()
    if credentials is None:
        log.info("auth_rejected", reason="missing_bearer", path=request.url.path)
        raise Unauthorized("missing bearer token")
    # compare_digest takes time independent of where the strings differ.
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        log.info("auth_rejected", reason="wrong_token", path=request.url.path)
        raise Unauthorized("invalid bearer token")
