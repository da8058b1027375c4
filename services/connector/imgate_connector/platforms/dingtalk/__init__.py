"""DingTalk: Stream-mode connection, message translation, AI cards."""

from imgate_connector.platform_api import load_alone

# Of the dingtalk-stream SDK the connector uses only its frame classes and version; the SDK's
# package imports its whole client (requests, aiohttp, the card helpers) on top: about 5 MB
# in every connector. Both modules import nothing but `json`.
load_alone("dingtalk_stream.frames", "dingtalk_stream.version")
