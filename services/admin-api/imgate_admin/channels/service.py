"""Channel use cases over the database, the status store and the control subject."""

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import structlog
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import delete, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.audit.service import record_action
from imgate_admin.channels.control import ChannelControl, ControlResult
from imgate_admin.channels.schemas import ChannelCreate, ChannelUpdate
from imgate_admin.destinations import require_secrets_follow, unmask_urls
from imgate_admin.errors import invalid_field, invalid_fields
from imgate_common.db.models import Agent, Channel, Conversation, Message, utcnow
from imgate_common.errors import Conflict, InvalidRequest, NotFound
from imgate_common.messages import ChannelState, ChannelStatus, ControlAction
from imgate_common.platform_config import USER_MAPPING, USER_MAPPINGS
from imgate_common.platforms import PLATFORM_CONFIGS, ConfigWithSecrets
from imgate_common.secrets import MASK, SecretBox
from imgate_common.status import STATUS_TTL_S, ChannelStatusStore

log = structlog.get_logger()


async def _name_taken(session: AsyncSession, name: str, other_than: int | None = None) -> bool:
    query = select(Channel.id).where(col(Channel.name) == name)
    if other_than is not None:
        query = query.where(col(Channel.id) != other_than)
    return (await session.exec(query)).first() is not None


async def _check_agent(session: AsyncSession, agent_id: int | None) -> None:
    if agent_id is not None and await session.get(Agent, agent_id) is None:
        # 400, not 404: the URL is fine, the body points at something that is not there.
        raise InvalidRequest(f"default_agent_id: agent {agent_id} does not exist")


def _encrypt(box: SecretBox, secrets: dict[str, str]) -> str | None:
    return box.encrypt_json(secrets) if secrets else None


def _stored(box: SecretBox, token: str | None) -> dict[str, Any]:
    """The stored secrets, or none when the configured keys cannot read them (then a masked
    field fails validation as missing, and the admin is asked to enter it again)."""
    try:
        return box.decrypt_json(token)
    except ValueError:
        log.warning("stored_secrets_unreadable")
        return {}


def _validated(
    model: type[ConfigWithSecrets],
    validate: Callable[[dict[str, Any]], ConfigWithSecrets],
    raw: dict[str, Any],
    before: dict[str, Any],
    stored: dict[str, Any],
    loc: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(public, secrets) of an edited config. A secret sent as the mask or empty (or left out)
    keeps the stored value, unless a field that says where it is sent changed; a URL sent back as
    a response showed it (credentials masked) keeps its stored value."""
    merged = unmask_urls(raw, before, (loc,))
    kept = set()
    for name in model.secret_fields:
        if merged.get(name) in (None, "", MASK):
            if name in stored:
                merged[name] = stored[name]
                kept.add(name)
            else:
                merged.pop(name, None)
    try:
        config = validate(merged)
    except ValidationError as exc:
        raise invalid_fields(exc, loc) from None
    require_secrets_follow(before, merged, model.destination_fields, kept, (loc,))
    return config.split()


def _audit_view(channel: Channel) -> dict[str, Any]:
    """Public fields only: secrets stay out of the audit log (their presence is all it says)."""
    return {
        "name": channel.name,
        "platform": channel.platform,
        "config": channel.config,
        "has_secrets": channel.secrets_enc is not None,
        "default_agent_id": channel.default_agent_id,
        "session_scope": channel.session_scope,
        "user_mapping": channel.user_mapping,
        "card_qps": channel.card_qps,
        "language": channel.language,
        "enabled": channel.enabled,
    }


async def create_channel(
    session: AsyncSession, box: SecretBox, control: ChannelControl, actor: str, body: ChannelCreate
) -> tuple[Channel, ControlResult | None]:
    await _check_agent(session, body.default_agent_id)
    if await _name_taken(session, body.name):
        raise Conflict(f"a channel named {body.name!r} already exists")
    public, secrets = body.config.split()
    mapping, mapping_secrets = body.user_mapping.split()
    channel = Channel(
        name=body.name,
        platform=body.platform,
        config=public,
        secrets_enc=_encrypt(box, secrets),
        default_agent_id=body.default_agent_id,
        session_scope=body.session_scope.value,
        user_mapping=mapping,
        user_mapping_secrets_enc=_encrypt(box, mapping_secrets),
        card_qps=body.card_qps,
        language=body.language,
        enabled=body.enabled,
    )
    session.add(channel)
    try:
        await session.flush()
        record_action(session, actor, "channel.create", f"channel:{channel.id}", _audit_view(channel))
        await session.commit()
    except IntegrityError:
        # Lost a race: a concurrent create took the name, or the agent was deleted meanwhile.
        await session.rollback()
        if await _name_taken(session, body.name):
            raise Conflict(f"a channel named {body.name!r} already exists") from None
        await _check_agent(session, body.default_agent_id)
        raise
    assert channel.id is not None
    log.info("channel_created", channel_id=channel.id, platform=channel.platform)
    result = None
    if channel.enabled:
        # Ask the owner to connect now rather than at its next reconcile; if nobody answers, that
        # reconcile still picks the channel up, so the create stands either way.
        result = await control.send(channel.id, ControlAction.START)
    return channel, result


async def list_channels(
    session: AsyncSession,
    store: ChannelStatusStore,
    *,
    platform: str | None = None,
    state: ChannelState | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[tuple[Channel, ChannelStatus]], int]:
    """One page of channels with their live status, and the number of channels that match."""
    query = select(Channel).order_by(col(Channel.id))
    if platform is not None:
        query = query.where(col(Channel.platform) == platform)
    if state is not None:
        # Disabled is decided by the row; every other state needs the live status.
        query = query.where(col(Channel.enabled).is_(state != ChannelState.DISABLED))
    if state in (None, ChannelState.DISABLED):
        rows = (await session.exec(query.limit(limit).offset(offset))).all()
        total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
        return list(zip(rows, await read_statuses(store, rows), strict=True)), total
    rows = (await session.exec(query)).all()
    matching = [
        (c, s) for c, s in zip(rows, await read_statuses(store, rows), strict=True) if s.state == state
    ]
    return matching[offset : offset + limit], len(matching)


async def get_channel(session: AsyncSession, channel_id: int) -> Channel:
    channel = await session.get(Channel, channel_id)
    if channel is None:
        raise NotFound(f"channel {channel_id} does not exist")
    return channel


def _validated_config(
    box: SecretBox, channel: Channel, raw: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    model = PLATFORM_CONFIGS.get(channel.platform)
    if model is None:
        raise InvalidRequest(f"platform {channel.platform!r} is no longer supported; delete the channel")
    stored = _stored(box, channel.secrets_enc)
    return _validated(model, model.model_validate, raw, channel.config, stored, "config")


def _validated_mapping(
    box: SecretBox, channel: Channel, raw: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    mode = raw.get("mode", "auto")
    # An unknown mode has no secrets to keep; validation names the modes there are.
    model = (USER_MAPPINGS.get(mode) if isinstance(mode, str) else None) or ConfigWithSecrets
    # Secrets of another mode mean nothing to this one: switching modes needs them entered anew.
    same_mode = mode == channel.user_mapping.get("mode", "auto")
    stored = _stored(box, channel.user_mapping_secrets_enc) if same_mode else {}
    merged = {**raw, "mode": mode}
    return _validated(
        model, USER_MAPPING.validate_python, merged, channel.user_mapping, stored, "user_mapping"
    )


async def update_channel(
    session: AsyncSession,
    box: SecretBox,
    control: ChannelControl,
    actor: str,
    channel_id: int,
    body: ChannelUpdate,
) -> tuple[Channel, ControlResult | None]:
    channel = await get_channel(session, channel_id)
    given = body.model_fields_set
    for field in ("name", "session_scope", "card_qps", "language", "enabled", "config", "user_mapping"):
        if field in given and getattr(body, field) is None:
            raise invalid_field((field,), "may not be null; leave it out to keep the stored value")
    if body.platform is not None and body.platform != channel.platform:
        raise invalid_field(("platform",), "a channel's platform cannot change; create a new channel")
    if body.name is not None and await _name_taken(session, body.name, other_than=channel_id):
        raise Conflict(f"a channel named {body.name!r} already exists")
    if "default_agent_id" in given:
        await _check_agent(session, body.default_agent_id)

    changed: list[str] = []

    def put(field: str, value: Any) -> None:
        if getattr(channel, field) != value:
            setattr(channel, field, value)
            changed.append(field)

    config = mapping = None
    problems: list[Any] = []  # both parts checked, so one answer names every field to fix
    try:
        config = None if body.config is None else _validated_config(box, channel, body.config)
    except RequestValidationError as exc:
        problems += exc.errors()
    try:
        mapping = None if body.user_mapping is None else _validated_mapping(box, channel, body.user_mapping)
    except RequestValidationError as exc:
        problems += exc.errors()
    if problems:
        raise RequestValidationError(problems)
    if config is not None:
        public, secrets = config
        put("config", public)
        if secrets != _stored(box, channel.secrets_enc):
            channel.secrets_enc = _encrypt(box, secrets)
            changed.append("secrets")
    if mapping is not None:
        mapping_public, mapping_secrets = mapping
        put("user_mapping", mapping_public)
        if mapping_secrets != _stored(box, channel.user_mapping_secrets_enc):
            channel.user_mapping_secrets_enc = _encrypt(box, mapping_secrets)
            changed.append("user_mapping_secrets")
    if "default_agent_id" in given:
        put("default_agent_id", body.default_agent_id)
    for field in ("name", "card_qps", "language", "enabled"):
        if getattr(body, field) is not None:
            put(field, getattr(body, field))
    if body.session_scope is not None:
        put("session_scope", body.session_scope.value)
    if not changed:
        return channel, None

    was_enabled = channel.enabled if "enabled" not in changed else not channel.enabled
    channel.updated_at = utcnow()
    session.add(channel)
    record_action(
        session,
        actor,
        "channel.update",
        f"channel:{channel_id}",
        {"changed": changed, **_audit_view(channel)},
    )
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        if body.name is not None and await _name_taken(session, body.name, other_than=channel_id):
            raise Conflict(f"a channel named {body.name!r} already exists") from None
        await _check_agent(session, body.default_agent_id)
        raise
    log.info("channel_updated", channel_id=channel_id, changed=changed)
    # The connector re-reads the row on start and reload and reconnects when the connection's
    # config (credentials, endpoint) changed; other fields are picked up without a reconnect.
    if channel.enabled and not was_enabled:
        return channel, await control.send(channel_id, ControlAction.START)
    if was_enabled and not channel.enabled:
        return channel, await control.send(channel_id, ControlAction.STOP)
    if channel.enabled:
        return channel, await control.send(channel_id, ControlAction.RELOAD)
    return channel, None


async def set_enabled(
    session: AsyncSession, control: ChannelControl, actor: str, channel_id: int, enabled: bool
) -> tuple[Channel, ControlResult]:
    channel = await get_channel(session, channel_id)
    if channel.enabled != enabled:
        channel.enabled = enabled
        channel.updated_at = utcnow()
        session.add(channel)
        action = "channel.enable" if enabled else "channel.disable"
        record_action(session, actor, action, f"channel:{channel_id}", {"name": channel.name})
        await session.commit()
        log.info("channel_enabled" if enabled else "channel_disabled", channel_id=channel_id)
    # Sent even when nothing changed: enabling an enabled channel is also how to nudge its owner.
    result = await control.send(channel_id, ControlAction.START if enabled else ControlAction.STOP)
    return channel, result


async def restart_channel(
    session: AsyncSession, control: ChannelControl, actor: str, channel_id: int
) -> tuple[Channel, ControlResult]:
    channel = await get_channel(session, channel_id)
    if not channel.enabled:
        raise InvalidRequest(f"channel {channel_id} is disabled; enable it to connect it again")
    record_action(session, actor, "channel.restart", f"channel:{channel_id}", {"name": channel.name})
    await session.commit()
    log.info("channel_restart_requested", channel_id=channel_id)
    return channel, await control.send(channel_id, ControlAction.RESTART)


async def delete_channel(
    session: AsyncSession, control: ChannelControl, store: ChannelStatusStore, actor: str, channel_id: int
) -> None:
    channel = await get_channel(session, channel_id)
    # Disabled first, so a reconcile between the stop and the delete cannot start it again.
    if channel.enabled:
        channel.enabled = False
        session.add(channel)
        await session.commit()
    await control.send(channel_id, ControlAction.STOP)
    conversations = select(Conversation.id).where(col(Conversation.channel_id) == channel_id)
    # Its conversations and their transcripts go with it (the audit entry keeps the counts).
    messages = await session.exec(delete(Message).where(col(Message.conversation_id).in_(conversations)))
    opened = await session.exec(delete(Conversation).where(col(Conversation.channel_id) == channel_id))
    counts = {"messages": messages.rowcount, "conversations": opened.rowcount}
    await session.delete(channel)
    record_action(
        session, actor, "channel.delete", f"channel:{channel_id}", {"name": channel.name, "deleted": counts}
    )
    try:
        await session.commit()
    except IntegrityError:
        # A message for it was being stored while we deleted: it stays disabled; try again.
        await session.rollback()
        raise Conflict(f"channel {channel_id} was still receiving messages; delete it again") from None
    await store.delete(channel_id)
    log.info("channel_deleted", channel_id=channel_id, **counts)


async def read_status(store: ChannelStatusStore, channel: Channel) -> ChannelStatus:
    """What an operator should see: the store's view (disabled wins, a missing entry reads as
    disconnected), where an unreadable entry, or a stale one whose owner stopped refreshing it,
    reads as disconnected too, never as the last green it wrote."""
    assert channel.id is not None
    try:
        status = await store.read(channel.id, channel.enabled)
    except ValidationError:
        log.warning("channel_status_unreadable", channel_id=channel.id)
        state = ChannelState.DISCONNECTED if channel.enabled else ChannelState.DISABLED
        return ChannelStatus(channel_id=channel.id, state=state)
    stale = utcnow() - status.updated_at > timedelta(seconds=STATUS_TTL_S)
    if stale and status.state in (ChannelState.CONNECTED, ChannelState.CONNECTING):
        return status.model_copy(
            update={"state": ChannelState.DISCONNECTED, "owner": None, "connected_at": None}
        )
    return status


async def read_statuses(store: ChannelStatusStore, channels: Sequence[Channel]) -> list[ChannelStatus]:
    return list(await asyncio.gather(*(read_status(store, c) for c in channels)))
