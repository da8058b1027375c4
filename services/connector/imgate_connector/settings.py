"""Connector settings (env prefix `CONNECTOR_`)."""

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from imgate_common.settings import CommonSettings


class ConnectorSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="CONNECTOR_", extra="ignore", validate_by_name=True)

    # The dingtalk-stream SDK's own variable, so one setting points both at a private gateway or imsim.
    dingtalk_openapi_endpoint: str = Field(
        "https://api.dingtalk.com",
        validation_alias=AliasChoices("DINGTALK_OPENAPI_ENDPOINT", "CONNECTOR_DINGTALK_OPENAPI_ENDPOINT"),
    )
    # Missed control messages are caught up by re-reading the channels this often.
    reconcile_interval_s: float = 10.0
    # A dead replica's channels move after at most one TTL (the invariant allows 15 s).
    lease_ttl_s: float = 10.0
    status_interval_s: float = 5.0
    # Card text updates per run at most this often: smooth to the eye, far under platform QPS limits.
    card_update_interval_s: float = 0.25
    publish_timeout_s: float = 5.0
    http_timeout_s: float = 10.0
    # Back-off between reconnect attempts: exponential with jitter, from min to max.
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
