"""A DingTalk channel's configuration and the protocol constants it relies on."""

from pydantic import BaseModel, ConfigDict, HttpUrl

BOT_MESSAGE_TOPIC = "/v1.0/im/bot/messages/get"
# The AI markdown card template every DingTalk tenant has; its text lives under `msgContent`.
AI_CARD_TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema"
AI_CARD_CONTENT_KEY = "msgContent"


class DingTalkConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    client_id: str
    client_secret: str
    robot_code: str | None = None  # DingTalk uses the app key as robot code for internal apps
    openapi_endpoint: HttpUrl | None = None
    card_template_id: str = AI_CARD_TEMPLATE
    card_content_key: str = AI_CARD_CONTENT_KEY

    def endpoint(self, default: str) -> str:
        return str(self.openapi_endpoint or default).rstrip("/")
