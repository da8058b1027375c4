"""Optional imports a service process never uses, refused before its libraries look for them.

Some libraries import an optional package whenever it is installed, and the workspace installs
them for other reasons: httpx imports its command-line client (click, rich, pygments; there
for admin-api's typer CLI and the dev tools), structlog's console renderer imports rich for
tracebacks the services never hand it (`format_exc_info` renders them first), and nats-py
imports aiohttp (there for the dingtalk-stream SDK's client) for NATS over websocket. Together
about 12 MB of every process that loads them. A `None` in `sys.modules` makes their `import` raise
`ImportError`, the case each library handles as "not installed".

This module imports nothing beyond the standard library: it must run before the libraries do.
"""

import os
import sys
from collections.abc import Mapping

ALWAYS_UNUSED = ("httpx._main", "rich")
WEBSOCKET_SCHEMES = ("ws://", "wss://")
# The names CommonSettings.nats_url reads (pydantic-settings matches them in any case).
NATS_URL_NAMES = ("NATS_URL", "IMGATE_NATS_URL")


def unused_modules(env: Mapping[str, str]) -> list[str]:
    """The modules to refuse in a process with environment `env`: aiohttp stays allowed when
    the NATS URL is a websocket one, the only use nats-py makes of it."""
    names = list(ALWAYS_UNUSED)
    nats_urls = [value.lower() for key, value in env.items() if key.upper() in NATS_URL_NAMES]
    if not any(scheme in url for url in nats_urls for scheme in WEBSOCKET_SCHEMES):
        names.append("aiohttp")
    return names


def skip_unused_imports(env: Mapping[str, str] = os.environ) -> None:
    """Refuse the unused modules that are not loaded yet (one already loaded stays)."""
    for name in unused_modules(env):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
