"""Where stored secrets are sent.

A stored secret follows its destination (a base URL, an endpoint, a directory's URL) only when it
is entered again: otherwise anyone holding an admin token could point it at a host of their own
(DESIGN.md, invariant 8). And the credentials a destination URL may carry (`user:pass@`,
`?key=`) read as the mask on the way out, in responses and in the audit log.
"""

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from fastapi.exceptions import RequestValidationError

from imgate_common.logs import redact_url
from imgate_common.secrets import MASK

DEFAULT_PORTS = {"http": 80, "https": 443, "ldap": 389, "ldaps": 636}

Loc = tuple[str | int, ...]
# How a refusal ends: clients (the CLI) recognise by it which fields to ask for again.
ENTER_AGAIN = "again (a stored secret is only sent where it was configured to go)"


def _destination(value: Any) -> Any:
    """What decides where a request goes: scheme, host, port, path and query of a URL (its
    user-info and a trailing slash do not move it); any other value as it is."""
    if not isinstance(value, str) or "://" not in value:
        return value or None
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    return scheme, host, port or DEFAULT_PORTS.get(scheme), parts.path.rstrip("/"), parts.query


def moved_destinations(
    before: Mapping[str, Any], after: Mapping[str, Any], fields: Iterable[str]
) -> list[str]:
    """The destination `fields` whose value sends a request somewhere else after the change."""
    return sorted(f for f in fields if _destination(before.get(f)) != _destination(after.get(f)))


def require_secrets_follow(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    destinations: Iterable[str],
    kept: Iterable[str],
    loc: Loc = (),
) -> None:
    """Refuse (422) an update that keeps the stored secrets `kept` while a destination moves."""
    moved = moved_destinations(before, after, destinations)
    kept = sorted(kept)
    if not moved or not kept:
        return
    changed = " and ".join(moved)
    raise RequestValidationError(
        [
            {
                "loc": ("body", *loc, name),
                "msg": f"{changed} changed: enter {name} {ENTER_AGAIN}",
                "type": "secret_required",
            }
            for name in kept
        ]
    )


def mask_url(value: str | None) -> str | None:
    """`value` with the credentials in its user-info and query shown as the mask."""
    return redact_url(value, MASK) if value else value


def mask_urls(value: Any) -> Any:
    """Every URL string inside `value` (dicts and lists walked) with its credentials masked."""
    if isinstance(value, str):
        return mask_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_urls(v) for v in value]
    return value


def unmask_url(sent: Any, stored: str | None, loc: Loc) -> Any:
    """The stored URL when `sent` is it as a response showed it (credentials masked); a URL that
    holds the mask in place of a credential otherwise is refused, never stored."""
    if not isinstance(sent, str) or sent == stored:
        return sent
    if stored and sent == mask_url(stored):
        return stored
    if "://" in sent and MASK in sent:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", *loc),
                    "msg": f'holds "{MASK}" for a credential: enter the URL with its credentials, '
                    "or send it back as it was shown",
                    "type": "value_error",
                }
            ]
        )
    return sent


def unmask_urls(sent: Mapping[str, Any], stored: Mapping[str, Any], loc: Loc) -> dict[str, Any]:
    """`sent` with each URL field that echoes its masked stored value restored (see `unmask_url`)."""
    return {k: unmask_url(v, stored.get(k), (*loc, k)) for k, v in sent.items()}
