"""Who is talking: an IM identity (platform, tenant, user id) resolved to one of our users."""

import hashlib

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import ImIdentity, User
from imgate_common.messages import InboundMessage

log = structlog.get_logger()


class AutoUserMapper:
    """Creates a user on first contact: username = IM user id, a placeholder e-mail."""

    def __init__(self, email_domain: str) -> None:
        self._domain = email_domain

    async def resolve(self, session: AsyncSession, message: InboundMessage) -> User:
        tenant = message.sender.corp_id or ""
        identity = await self._find(session, message.platform, tenant, message.sender.id)
        if identity is not None:
            user = await session.get(User, identity.user_id)
            assert user is not None
            return user
        try:
            async with session.begin_nested():
                user = await self._create_user(session, message)
                assert user.id is not None
                session.add(
                    ImIdentity(
                        platform=message.platform,
                        tenant_id=tenant,
                        platform_user_id=message.sender.id,
                        user_id=user.id,
                        nick=message.sender.nick,
                    )
                )
        except IntegrityError:
            # Another router replica created the same identity a moment ago: use theirs.
            identity = await self._find(session, message.platform, tenant, message.sender.id)
            if identity is None:
                raise
            user = await session.get(User, identity.user_id)
            assert user is not None
            return user
        log.info("user_created", user_id=user.id, username=user.username, platform=message.platform)
        return user

    async def _find(
        self, session: AsyncSession, platform: str, tenant: str, user_id: str
    ) -> ImIdentity | None:
        query = select(ImIdentity).where(
            ImIdentity.platform == platform,
            ImIdentity.tenant_id == tenant,
            ImIdentity.platform_user_id == user_id,
        )
        return (await session.exec(query)).first()

    async def _create_user(self, session: AsyncSession, message: InboundMessage) -> User:
        wanted = message.sender.id
        username = wanted
        if (await session.exec(select(User).where(User.username == wanted))).first():
            # Taken by someone else: never attach a stranger's identity to an existing account.
            digest = hashlib.sha256(
                f"{message.platform}:{message.sender.corp_id}:{wanted}".encode()
            ).hexdigest()[:8]
            username = f"{wanted}.{message.platform}.{digest}"
        user = User(
            username=username,
            email=f"{username}@{self._domain}",
            display_name=message.sender.nick,
            auth_source=message.platform,
        )
        session.add(user)
        await session.flush()
        return user
