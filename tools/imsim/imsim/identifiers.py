"""Identifiers and clocks every simulated platform uses."""

import secrets
import time
import uuid


def now_ms() -> int:
    """Wall-clock time as the platforms report it: milliseconds since the epoch."""
    return int(time.time() * 1000)


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_token() -> str:
    return secrets.token_hex(16)


def download_code() -> str:
    """URL-safe, so it can sit in a /media/<code> path unquoted."""
    return "dc_" + secrets.token_urlsafe(24)
