"""Connector settings (env prefix `CONNECTOR_`)."""

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from imgate_common.settings import CommonSettings


class ConnectorSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="CONNECTOR_", extra="ignore", validate_by_name=True)

    metrics_port: int = 9101  # Prometheus /metrics (0: any free port, -1: none)

    # --- ownership ---------------------------------------------------------------------------
    # Missed control messages are caught up by re-reading the channels this often.
    reconcile_interval_s: float = 10.0
    # A dead replica's channels move after at most one TTL plus `takeover_grace_s` plus one
    # `lease_interval_s`; 6 + 2 + 1 s stays well inside the 15 s the design allows.
    lease_ttl_s: float = 6.0
    # Leases are renewed and free channels looked for this often.
    lease_interval_s: float = 1.0
    # A free channel that another live replica should hold (by rendezvous hashing) is left to it
    # this long; after that anyone takes it, so a channel is never orphaned by the spreading.
    takeover_grace_s: float = 2.0
    status_interval_s: float = 2.0
    # A replica holding more than its share hands one channel over per this many seconds.
    rebalance_interval_s: float = 5.0

    # --- connection --------------------------------------------------------------------------
    # Back-off between reconnect attempts: exponential with jitter, from min to max.
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    # Watchdog: a websocket ping goes out after this long without any frame, and a socket that
    # delivered neither a frame nor a pong for `stale_after_s` is half-dead and gets replaced.
    ping_interval_s: float = 10.0
    stale_after_s: float = 30.0
    # After SYSTEM disconnect the server closes the old socket (~10 s); we stop waiting after this.
    drain_timeout_s: float = 15.0
    # On stop, frames already being published get this long to finish and be ACKed.
    stop_drain_s: float = 2.0
    # Frames handled at once per channel; more wait un-ACKed (the platform redelivers them).
    max_frames_in_flight: int = 64
    publish_timeout_s: float = 5.0
    # A publish the bus did not confirm (NATS restarting) is tried again until this long after
    # the message came, well inside the ~60 s after which DingTalk redelivers it itself; a
    # conversation's later messages wait for it, so none is answered before an earlier one.
    publish_retry_for_s: float = 20.0
    # Messages of one conversation waiting for the bus at once; more are not ACKed (redelivered).
    publish_max_waiting_per_conversation: int = 16
    http_timeout_s: float = 10.0

    # --- media -------------------------------------------------------------------------------
    # Files and pictures are fetched into the bus's object store (see media.py), up to this size.
    media_max_bytes: int = 20 * 1024 * 1024
    media_timeout_s: float = 15.0
    # Text files up to this size also go into the message text, so the model reads them.
    media_inline_text_max_bytes: int = 32 * 1024
    media_ttl_s: float = 24 * 3600
    # The media bucket's own cap: when full, a picture is skipped (its message still goes
    # through, and the sender is told), so media never fill the store the streams need.
    media_bucket_max_bytes: int = Field(
        2 * 1024**3,
        validation_alias=AliasChoices("IMGATE_MEDIA_BUCKET_MAX_BYTES", "CONNECTOR_MEDIA_BUCKET_MAX_BYTES"),
    )
    # Whether a channel's agent takes pictures is re-read from the database this often.
    media_agent_check_s: float = 30.0

    # --- replies -----------------------------------------------------------------------------
    # Language of what the connector says itself (queued line, continuation marker); a channel's
    # own `language` column overrides it.
    language: str = "zh-CN"
    # Card text updates per card at most this often: smooth to the eye, far under platform limits.
    card_update_interval_s: float = 0.25
    # Card API calls per second per app, shared by every replica (DingTalk throttles at ~20-50):
    # set it to the app's limit; the card-call scheduler paces 95 % of it, so a second never holds
    # more calls than the limit. A channel's own `card_qps` column overrides it.
    card_qps: float = 20.0
    # Longer answers continue in a further card (or message); markdown cards get sluggish past it.
    card_max_chars: int = 5000
    # Card API failures in a row that make the channel answer in plain text for `card_cooldown_s`.
    card_failures_to_trip: int = 3
    card_cooldown_s: float = 15.0
    # How long an essential card call (create, final) keeps retrying 403 QpsLimit / 429.
    card_rate_limit_patience_s: float = 60.0
    # A card left open by a failed close (its answer went out as plain text) is closed later:
    # first retry after this long, backing off to a minute, given up after `card_mend_for_s`
    # (longer than a platform outage is expected to last; reported when it happens).
    card_mend_first_s: float = 2.0
    card_mend_for_s: float = 1800.0
    # Reply events JetStream redelivers when unacknowledged this long; a long final keeps it alive.
    reply_ack_wait_s: float = 10.0
    # A conversation's finals are shown in the order of its messages: a final waits for the
    # previous run's at most this long (longer than a final held back by the card budget takes,
    # short enough that a lost earlier answer does not hold the next one up for long).
    final_order_wait_s: float = 30.0
    # A run whose events stopped this long ago is forgotten (its card stays as it is).
    run_idle_forget_s: float = 3600.0
    # Chaos testing only (chaos/run.py poison-reply): a final answer containing this text fails
    # in the reply consumer on every try, as a renderer bug would. Empty: off.
    chaos_poison_reply_mark: str = ""
