"""What a platform package may use of the connector: its only door into the core.

`platforms/<name>/` imports this module, `imgate_common`, third-party libraries and its own
package, nothing else of the connector (tests/connector/test_platform_imports.py holds it to
that). A platform brings its transport frames, translation table, reply surface and config; the
core runs the inbound pipeline, the reconnecting link and the card calls.
"""

from imgate_connector.cardcalls import (
    CardSurface,
    app_scheduler,
    transient,
    with_retries,
)
from imgate_connector.health import ChannelHealth
from imgate_connector.link import ReconnectingLink, SocketAdapter
from imgate_connector.media import MediaSource
from imgate_connector.metrics import PLATFORM_API_CALLS
from imgate_connector.pipeline import MALFORMED, InboundFrame, InboundPipeline, MediaUrl
from imgate_connector.platforms.base import (
    CardExists,
    CardNotFinalized,
    CardsUnavailable,
    CardText,
    PlatformAdapter,
    ReplySurface,
)
from imgate_connector.scheduler import CallClass, CardCallScheduler
from imgate_connector.sdk_modules import load_alone
from imgate_connector.settings import ConnectorSettings
from imgate_connector.tokens import AccessToken, AccessTokens

__all__ = [
    "MALFORMED",
    "PLATFORM_API_CALLS",
    "AccessToken",
    "AccessTokens",
    "CallClass",
    "CardCallScheduler",
    "CardExists",
    "CardNotFinalized",
    "CardSurface",
    "CardText",
    "CardsUnavailable",
    "ChannelHealth",
    "ConnectorSettings",
    "InboundFrame",
    "InboundPipeline",
    "MediaSource",
    "MediaUrl",
    "PlatformAdapter",
    "ReconnectingLink",
    "ReplySurface",
    "SocketAdapter",
    "app_scheduler",
    "load_alone",
    "transient",
    "with_retries",
]
