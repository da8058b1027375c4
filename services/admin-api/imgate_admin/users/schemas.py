"""Request and response bodies of /api/v1/users."""

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from imgate_admin.schemas import RequestBody, SafeText, UtcDatetime
from imgate_common.db.models import ImIdentity, User

Username = Annotated[SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[
    SafeText, StringConstraints(strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
]
DisplayName = Annotated[SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
PlatformId = Annotated[SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class UserCreate(RequestBody):
    username: Username
    email: Email | None = None
    display_name: DisplayName | None = None


class IdentityLink(RequestBody):
    platform: Annotated[SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]
    tenant_id: Annotated[SafeText, StringConstraints(strip_whitespace=True, max_length=200)] = Field(
        "", description="the platform's organisation (DingTalk corpId); empty when it has none"
    )
    platform_user_id: PlatformId = Field(description="the platform's user id (DingTalk staff id)")
    nick: DisplayName | None = None


class IdentityRead(BaseModel):
    id: int
    user_id: int
    platform: str
    tenant_id: str
    platform_user_id: str
    nick: str | None
    created_at: UtcDatetime

    @classmethod
    def from_row(cls, identity: ImIdentity) -> "IdentityRead":
        assert identity.id is not None
        return cls(
            id=identity.id,
            user_id=identity.user_id,
            platform=identity.platform,
            tenant_id=identity.tenant_id,
            platform_user_id=identity.platform_user_id,
            nick=identity.nick,
            created_at=identity.created_at,
        )


class UserRead(BaseModel):
    id: int
    username: str
    email: str | None
    display_name: str | None
    auth_source: str
    created_at: UtcDatetime
    identities: list[IdentityRead]

    @classmethod
    def from_row(cls, user: User, identities: list[ImIdentity]) -> "UserRead":
        assert user.id is not None
        return cls(
            id=user.id,
            username=user.username,
            email=user.email,
            display_name=user.display_name,
            auth_source=user.auth_source,
            created_at=user.created_at,
            identities=[IdentityRead.from_row(i) for i in identities],
        )
