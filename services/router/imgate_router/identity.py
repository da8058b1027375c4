"""Who is talking: an IM identity (platform, tenant, user id) resolved to one of our users."""

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from typing import TypeAlias

import httpx
import structlog
from opentelemetry import trace
from pydantic import ValidationError
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.config_cache import ConfigCache
from imgate_common.db.models import Channel, ImIdentity, User
from imgate_common.errors import GatewayError
from imgate_common.messages import InboundMessage
from imgate_common.platform_config import (
    AutoUserMapping,
    HttpUserMapping,
    LdapUserMapping,
    StaticUserMapping,
    parse_user_mapping,
)
from imgate_common.sanitise import clean_text
from imgate_common.secrets import SecretBox
from imgate_common.telemetry import fail, tracer
from imgate_router.mappers import (
    HttpMapper,
    LdapMapper,
    MapperMisconfigured,
    Person,
    StaticMapper,
    UserMapper,
)
from imgate_router.metrics import IDENTITY_LOOKUPS, IDENTITY_SECONDS

log = structlog.get_logger()

USERNAME_LENGTH = 200  # users.username


class AutoUserMapper:
    """Creates a user on first contact: username = IM user id, a placeholder e-mail."""

    def __init__(self, email_domain: str) -> None:
        self._domain = email_domain

    async def resolve(self, session: AsyncSession, message: InboundMessage) -> int:
        """The id of the user behind the message's identity, created on first contact."""
        tenant = message.sender.tenant_id or ""
        identity = await self._find(session, message.platform, tenant, message.sender.id)
        if identity is not None:
            return identity.user_id
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
            return identity.user_id
        log.info("user_created", user_id=user.id, username=user.username, platform=message.platform)
        return user.id

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
                f"{message.platform}:{message.sender.tenant_id}:{wanted}".encode()
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


AnyMapping: TypeAlias = AutoUserMapping | LdapUserMapping | HttpUserMapping | StaticUserMapping


@dataclass(frozen=True)
class ResolvedUser:
    id: int
    mapper: str  # auto, ldap, http, static
    cached: bool  # from memory: nothing was read or written for it


class NotRegistered(GatewayError):
    """The channel's mapper knows nobody by this identity and the channel does not auto-create."""


class IdentityResolver:
    """The channel's mapper, a Redis cache in front of it, and the link kept in the database;
    each identity's user, once known, from memory (`ConfigCache`, emptied when an administrator
    changes a channel or an identity)."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        box: SecretBox,
        http: httpx.AsyncClient,
        auto: AutoUserMapper,
        cache_ttl_s: int,
        ldap_timeout_s: float,
        users: ConfigCache[tuple[int, str, str, str], tuple[int, str]] | None = None,
        mappings: ConfigCache[int, AnyMapping] | None = None,
    ) -> None:
        self.users = users if users is not None else ConfigCache()
        self.mappings = mappings if mappings is not None else ConfigCache()
        self._redis = redis
        self._prefix = prefix
        self._box = box
        self._http = http
        self._auto = auto
        self._cache_ttl = cache_ttl_s
        self._ldap_timeout = ldap_timeout_s

    def mapping(self, channel: Channel) -> AnyMapping:
        assert channel.id is not None
        cached = self.mappings.get(channel.id)
        if cached is not None:
            return cached
        try:
            mapping = parse_user_mapping(
                channel.user_mapping or {}, self._box.decrypt_json(channel.user_mapping_secrets_enc)
            )
        except (ValueError, ValidationError) as exc:
            raise MapperMisconfigured(f"the channel's user mapping is invalid: {exc}") from exc
        self.mappings.put(channel.id, mapping)
        return mapping

    def _mapper(self, config: AnyMapping) -> UserMapper | None:
        match config:
            case LdapUserMapping():
                return LdapMapper(config, self._ldap_timeout)
            case HttpUserMapping():
                return HttpMapper(config, self._http)
            case StaticUserMapping():
                return StaticMapper(config)
        return None

    @staticmethod
    def _key(channel: Channel, message: InboundMessage) -> tuple[int, str, str, str]:
        assert channel.id is not None
        return (channel.id, message.platform, message.sender.tenant_id or "", message.sender.id)

    async def resolve(self, session: AsyncSession, channel: Channel, message: InboundMessage) -> ResolvedUser:
        """The user behind the message; raises NotRegistered, MapperUnavailable (try again
        later) or MapperMisconfigured (an administrator must fix the mapping)."""
        started = time.perf_counter()
        known = self.users.get(self._key(channel, message))
        if known is not None:  # no round trip at all for a user seen lately
            user_id, mapper_name = known
            IDENTITY_LOOKUPS.labels(mapper_name, "resolved").inc()
            IDENTITY_SECONDS.labels(mapper_name).observe(time.perf_counter() - started)
            return ResolvedUser(user_id, mapper_name, cached=True)
        mapper_name = "invalid"
        with tracer().start_as_current_span("identity.resolve", record_exception=False) as span:
            try:
                config = self.mapping(channel)
                mapper = self._mapper(config)
                mapper_name = mapper.name if mapper else "auto"
                span.set_attribute("imgate.identity.mapper", mapper_name)
                user = await self._resolve(session, channel, config, mapper, message)
            except NotRegistered:
                IDENTITY_LOOKUPS.labels(mapper_name, "not_registered").inc()
                raise
            except Exception as exc:
                IDENTITY_LOOKUPS.labels(mapper_name, "failed").inc()
                fail(span, exc)
                raise
            IDENTITY_LOOKUPS.labels(mapper_name, "resolved").inc()
            IDENTITY_SECONDS.labels(mapper_name).observe(time.perf_counter() - started)
            return ResolvedUser(user, mapper_name, cached=False)

    def remember(self, channel: Channel, message: InboundMessage, resolved: ResolvedUser) -> None:
        """The transaction that resolved (perhaps created) the user is committed: from now on
        its identity is answered from memory."""
        if not resolved.cached:
            self.users.put(self._key(channel, message), (resolved.id, resolved.mapper))

    async def _resolve(
        self,
        session: AsyncSession,
        channel: Channel,
        config: AnyMapping,
        mapper: UserMapper | None,
        message: InboundMessage,
    ) -> int:
        if mapper is None:
            return await self._auto.resolve(session, message)
        person = await self._cached_lookup(channel, mapper, message)
        if person is None:
            if getattr(config, "fallback_to_auto", False):
                return await self._auto.resolve(session, message)
            raise NotRegistered(f"{mapper.name} knows no one as {message.sender.id}")
        return await self._link(session, mapper.name, person, message)

    async def _cached_lookup(
        self, channel: Channel, mapper: UserMapper, message: InboundMessage
    ) -> Person | None:
        key = ":".join(
            (self._prefix, "identity", str(channel.id), message.platform, message.sender.tenant_id or "",
             message.sender.id)
        )  # fmt: skip
        cached = await self._redis.get(key)
        trace.get_current_span().set_attribute("imgate.identity.cache_hit", cached is not None)
        if cached is not None:
            data = json.loads(cached)
            return Person(**data) if data else None
        person = await mapper.lookup(message)
        await self._redis.set(key, json.dumps(asdict(person) if person else None), ex=self._cache_ttl)
        return person

    async def _link(self, session: AsyncSession, source: str, person: Person, message: InboundMessage) -> int:
        """The directory is the authority: its username names the account, created if new."""
        # Looked up by it as well as stored: cleaned here, not only at the flush.
        person = replace(person, username=clean_text(person.username, USERNAME_LENGTH))
        user = (await session.exec(select(User).where(User.username == person.username))).first()
        if user is None:
            user = User(
                username=person.username,
                email=person.email,
                display_name=person.display_name or message.sender.nick,
                auth_source=source,
            )
            session.add(user)
            await session.flush()
        assert user.id is not None
        tenant = message.sender.tenant_id or ""
        identity = await self._auto._find(session, message.platform, tenant, message.sender.id)
        if identity is None:
            session.add(
                ImIdentity(
                    platform=message.platform,
                    tenant_id=tenant,
                    platform_user_id=message.sender.id,
                    user_id=user.id,
                    nick=message.sender.nick,
                )
            )
        elif identity.user_id != user.id:
            log.info("identity_relinked", platform=message.platform, user_id=user.id, source=source)
            identity.user_id = user.id
            session.add(identity)
        await session.flush()
        return user.id
