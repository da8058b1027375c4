"""Enterprise identity mappers: find the company person behind an IM identity.

`ldap` searches a directory (ldap3, off the event loop), `http` asks an ERP/HR endpoint, `static`
maps everyone to one account. Each answers a `Person`, None when nobody matches, or raises
`MapperUnavailable` when it could not tell (directory down, timeout, bad answer).
"""

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from imgate_common.errors import ConfigurationError, GatewayError
from imgate_common.messages import InboundMessage
from imgate_common.platform_config import HttpUserMapping, LdapUserMapping, StaticUserMapping


@dataclass(frozen=True)
class Person:
    username: str
    email: str | None = None
    display_name: str | None = None


class MapperUnavailable(GatewayError):
    """The mapper could not answer; the user is told to try again and the channel shows why."""


class MapperMisconfigured(ConfigurationError):
    """The mapping's settings are wrong (a filter placeholder, the shape the ERP answers in):
    retrying cannot help; the channel's status and the user say so at once."""


class UserMapper(ABC):
    name: ClassVar[str]

    @abstractmethod
    async def lookup(self, message: InboundMessage) -> Person | None: ...


class StaticMapper(UserMapper):
    name: ClassVar[str] = "static"

    def __init__(self, config: StaticUserMapping) -> None:
        self._person = Person(config.username, config.email, config.display_name)

    async def lookup(self, message: InboundMessage) -> Person | None:
        return self._person


class HttpMapper(UserMapper):
    """POSTs the identity as JSON; 200 with `username` is a match, 404 or `found: false` is none."""

    name: ClassVar[str] = "http"

    def __init__(self, config: HttpUserMapping, http: httpx.AsyncClient) -> None:
        self._config = config
        self._http = http

    async def lookup(self, message: InboundMessage) -> Person | None:
        headers = {}
        if self._config.api_key is not None:
            headers["Authorization"] = f"Bearer {self._config.api_key.get_secret_value()}"
        body = {
            "platform": message.platform,
            "tenant_id": message.sender.tenant_id,
            "user_id": message.sender.id,
            "employee_id": message.sender.employee_id,
            # The same, under the name lookup services written for DingTalk alone read.
            "staff_id": message.sender.employee_id,
            "nick": message.sender.nick,
        }
        try:
            response = await self._http.post(
                self._config.url, json=body, headers=headers, timeout=self._config.timeout_s
            )
        except httpx.HTTPError as exc:
            raise MapperUnavailable(f"identity service unreachable: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise MapperUnavailable(f"identity service answered {response.status_code}")
        try:
            data: Any = response.json()
        except ValueError as exc:
            raise MapperUnavailable("identity service answered something that is not JSON") from exc
        if not isinstance(data, dict):
            raise MapperMisconfigured(
                f"identity service {self._config.url} answered {type(data).__name__} "
                f"({str(data)[:40]}), not a JSON object with `username`: check the ERP lookup's URL "
                "and answer format"
            )
        if data.get("found") is False or not data.get("username"):
            return None
        return Person(
            str(data["username"]), _optional(data.get("email")), _optional(data.get("display_name"))
        )


def _optional(value: Any) -> str | None:
    return str(value) if value is not None else None


class LdapMapper(UserMapper):
    name: ClassVar[str] = "ldap"

    def __init__(self, config: LdapUserMapping, timeout_s: float = 5.0) -> None:
        self._config = config
        self._timeout = timeout_s

    async def lookup(self, message: InboundMessage) -> Person | None:
        fields = {
            "user_id": escape_filter_chars(message.sender.id),
            "employee_id": escape_filter_chars(message.sender.employee_id or message.sender.id),
            "nick": escape_filter_chars(message.sender.nick or ""),
        }
        try:
            search_filter = self._config.user_filter.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise MapperMisconfigured(
                f"LDAP user_filter {self._config.user_filter!r} cannot be filled ({type(exc).__name__}: "
                f"{exc}); it may use {{user_id}}, {{employee_id}} and {{nick}}"
            ) from exc
        return await asyncio.to_thread(self._search, search_filter)

    def _search(self, search_filter: str) -> Person | None:
        config = self._config
        server = ldap3.Server(config.url, connect_timeout=self._timeout, get_info=ldap3.NONE)
        attributes = [config.username_attribute, config.email_attribute, config.display_name_attribute]
        conn = ldap3.Connection(
            server,
            user=config.bind_dn,
            password=config.bind_password.get_secret_value(),
            receive_timeout=max(1, round(self._timeout)),  # ldap3 packs it as a C int
            read_only=True,
            raise_exceptions=True,
        )
        try:
            # Opened and closed here: ldap3's context manager leaves an auto-bound socket open.
            conn.open()
            conn.bind()
            conn.search(config.base_dn, search_filter, attributes=attributes)
            entries = list(conn.entries)
        except LDAPException as exc:
            raise MapperUnavailable(f"directory unavailable: {type(exc).__name__}") from exc
        finally:
            conn.unbind()
            if conn.socket is not None:  # a failed open leaves its socket behind
                conn.socket.close()
        if len(entries) != 1:
            return None  # nobody, or not one person: never guess between two accounts
        entry = entries[0]

        def value(attribute: str) -> str | None:
            raw = entry[attribute].value if attribute in entry else None
            if isinstance(raw, list):
                raw = raw[0] if raw else None
            return str(raw) if raw is not None else None

        username = value(config.username_attribute)
        if not username:
            return None
        return Person(username, value(config.email_attribute), value(config.display_name_attribute))
