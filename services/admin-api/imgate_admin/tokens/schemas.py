"""Request and response bodies of /api/v1/tokens."""

from pydantic import BaseModel, Field

from imgate_admin.schemas import Name, RequestBody, UtcDatetime
from imgate_common.db.models import ApiToken


class TokenCreate(RequestBody):
    name: Name = Field(description="What the token is for, e.g. the script or person using it")


class TokenRead(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="The token's first characters, to recognise it")
    created_by: str
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None

    @classmethod
    def from_row(cls, token: ApiToken) -> "TokenRead":
        assert token.id is not None
        return cls(
            id=token.id,
            name=token.name,
            prefix=token.prefix,
            created_by=token.created_by,
            created_at=token.created_at,
            revoked_at=token.revoked_at,
        )


class TokenCreated(TokenRead):
    token: str = Field(description="The bearer token itself; shown this once, only its hash is kept")
