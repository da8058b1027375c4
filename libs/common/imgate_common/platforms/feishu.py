"""Feishu's (and Lark's) own shared models: the channel config and what answering a Feishu chat needs.

Feishu and Lark are one platform on two domains: a Lark app is a `feishu` channel whose `domain` is
`https://open.larksuite.com`."""

from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from imgate_common.fields import HttpUrlStr
from imgate_common.platforms.base import Platform, PlatformConfig, PlatformReplyData

FEISHU_DOMAIN = "https://open.feishu.cn"
LARK_DOMAIN = "https://open.larksuite.com"


class FeishuConfig(PlatformConfig):
    platform: ClassVar[Platform] = Platform.FEISHU
    secret_fields: ClassVar[frozenset[str]] = frozenset({"app_secret"})
    destination_fields: ClassVar[frozenset[str]] = frozenset({"domain"})

    app_id: str = Field(min_length=1, max_length=200, description="App ID of the Feishu app (cli_…)")
    app_secret: SecretStr = Field(min_length=1, description="App Secret; stored encrypted")
    # Unset: Feishu (open.feishu.cn), or the connector's FEISHU_DOMAIN. Lark's apps set
    # https://open.larksuite.com; a private deployment or imsim sets its own URL.
    domain: HttpUrlStr | None = Field(
        None, description=f"open platform URL; {FEISHU_DOMAIN} when unset, {LARK_DOMAIN} for Lark"
    )


class FeishuReplyData(PlatformReplyData):
    """Where in a Feishu chat an answer goes: the tenant whose token sends it, and the thread."""

    platform: Literal[Platform.FEISHU] = Platform.FEISHU
    tenant_key: str | None = None  # the organisation the event came from (its token sends the answer)
    chat_type: str | None = None  # "p2p" or "group", as Feishu says it
    root_id: str | None = None  # the thread's first message, when the user wrote in a thread
    thread_id: str | None = None
