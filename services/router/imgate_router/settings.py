"""Router settings (env prefix `ROUTER_`)."""

from pydantic_settings import SettingsConfigDict

from imgate_common.settings import CommonSettings


class RouterSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", validate_by_name=True)

    metrics_port: int = 9102  # Prometheus /metrics (0: any free port, -1: none)

    # Domain of the e-mail address given to users created on first contact.
    auto_email_domain: str = "im-platform.com"
    # A handled message id is remembered this long; DingTalk redelivers within minutes.
    dedup_ttl_s: int = 7 * 24 * 3600
    # Identity mapper answers (LDAP, HTTP) are reused this long before asking again.
    identity_cache_ttl_s: int = 600
    ldap_timeout_s: float = 5.0
    # A conversation idle this long is closed; the next message starts a new one (0 = never).
    idle_timeout_s: float = 12 * 3600
    # Messages that may wait behind a conversation's running answer before we ask the user to wait.
    queue_max_depth: int = 5
    # Inbound rate limits, shared by every router replica (Redis): a sender past
    # `rate_user_per_window` messages per `rate_window_s`, or a channel past
    # `rate_channel_per_window`, is answered with a polite sentence and not run. 0: no limit.
    rate_window_s: float = 60.0
    rate_user_per_window: int = 20
    rate_channel_per_window: int = 3000
    # How often a router looks for conversations whose lock expired with runs still waiting
    # (it should not happen; a lost run must not strand the ones behind it).
    queue_sweep_interval_s: float = 30.0
    # Chaos testing only (chaos/run.py): exit the process right after publishing every Nth run
    # request, before the message is marked handled, as a crash there would. 0: never.
    chaos_exit_every_n_runs: int = 0
