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
    # How often a router looks for conversations whose lock expired with runs still waiting
    # (it should not happen; a lost run must not strand the ones behind it).
    queue_sweep_interval_s: float = 30.0
    # Chaos testing only (chaos/run.py): exit the process right after publishing every Nth run
    # request, before the message is marked handled, as a crash there would. 0: never.
    chaos_exit_every_n_runs: int = 0
