"""Settings shared by every service; each service extends `CommonSettings` with its own prefix."""

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgate_common.bus import StreamLimits

# Local runs keep everything under ./.data so a clone is self-contained and easy to wipe.
DEFAULT_DATA_DIR = Path(".data")


def _shared(name: str) -> AliasChoices:
    """Shared knobs keep their IMGATE_ names in every service, whatever the service's own prefix."""
    return AliasChoices(f"IMGATE_{name}", name.lower())


class CommonSettings(BaseSettings):
    """Connection URLs and process-wide knobs; the URLs use the unprefixed names operators expect."""

    model_config = SettingsConfigDict(env_prefix="IMGATE_", extra="ignore", validate_by_name=True)

    nats_url: str = Field(
        "nats://127.0.0.1:4222", validation_alias=AliasChoices("NATS_URL", "IMGATE_NATS_URL", "nats_url")
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "IMGATE_REDIS_URL", "redis_url"),
    )
    database_url: str = Field(
        "sqlite+aiosqlite:///.data/imgate.db",
        validation_alias=AliasChoices("DATABASE_URL", "IMGATE_DATABASE_URL", "database_url"),
    )
    data_dir: Path = Field(DEFAULT_DATA_DIR, validation_alias=_shared("DATA_DIR"))
    # Fernet keys, comma-separated, newest first. Empty: a key file under data_dir is created
    # (fine for a laptop; production passes the key from a Kubernetes secret).
    secret_keys: str = Field("", validation_alias=_shared("SECRET_KEYS"))
    log_format: str = Field("console", validation_alias=_shared("LOG_FORMAT"))  # "json" in production
    log_level: str = Field("INFO", validation_alias=_shared("LOG_LEVEL"))
    # Stream replicas: 1 on a single node, 3 on a clustered JetStream in production.
    stream_replicas: int = Field(1, validation_alias=_shared("STREAM_REPLICAS"))
    # What each stream may hold (see bus.stream_specs for what a full stream does). Applied by
    # every service at start, to existing streams too. Their sum, with the connector's media
    # bucket cap (CONNECTOR_MEDIA_BUCKET_MAX_BYTES), must fit in nats-server's max_file_store.
    inbound_max_bytes: int = Field(1024**3, validation_alias=_shared("INBOUND_MAX_BYTES"))
    inbound_max_msgs: int = Field(1_000_000, validation_alias=_shared("INBOUND_MAX_MSGS"))
    runs_max_bytes: int = Field(256 * 1024**2, validation_alias=_shared("RUNS_MAX_BYTES"))
    runs_max_msgs: int = Field(100_000, validation_alias=_shared("RUNS_MAX_MSGS"))
    replies_max_bytes: int = Field(1024**3, validation_alias=_shared("REPLIES_MAX_BYTES"))
    replies_max_msgs: int = Field(2_000_000, validation_alias=_shared("REPLIES_MAX_MSGS"))
    dead_letters_max_bytes: int = Field(256 * 1024**2, validation_alias=_shared("DEAD_LETTERS_MAX_BYTES"))
    dead_letters_max_msgs: int = Field(10_000, validation_alias=_shared("DEAD_LETTERS_MAX_MSGS"))
    # Namespace for every Redis key, so several installations can share one Redis.
    redis_prefix: str = Field("imgate", validation_alias=_shared("REDIS_PREFIX"))
    # A run admitted (or handed its conversation's turn) but not yet taken by a runner holds the
    # conversation at most this long: it waits in JetStream while every runner is busy. A runner
    # that takes it holds a short lease instead, renewed while the run lives
    # (RUNNER_CONVERSATION_LEASE_TTL_S), so no agent timeout is bounded by this.
    conversation_active_ttl_s: float = Field(900.0, validation_alias=_shared("CONVERSATION_ACTIVE_TTL_S"))
    instance_id: str = Field("", validation_alias=_shared("INSTANCE_ID"))  # default hostname:pid
    # Redis connections per process; a call finding all in use waits for one (up to the timeout)
    # instead of failing at once, so a burst slows down rather than dropping work.
    redis_max_connections: int = Field(200, validation_alias=_shared("REDIS_MAX_CONNECTIONS"))
    redis_pool_timeout_s: float = Field(5.0, validation_alias=_shared("REDIS_POOL_TIMEOUT_S"))
    # Message text on trace spans: off, since traces often go to shared backends. For debugging.
    trace_content: bool = Field(False, validation_alias=_shared("TRACE_CONTENT"))
    # Prometheus `/metrics` of a service without an HTTP API of its own (each sets its default
    # port; 0 picks a free one, -1 serves none). Bound on every interface for the scraper.
    metrics_port: int = -1
    metrics_host: str = Field("0.0.0.0", validation_alias=_shared("METRICS_HOST"))

    def stream_limits(self) -> StreamLimits:
        return StreamLimits(
            inbound_max_bytes=self.inbound_max_bytes,
            inbound_max_msgs=self.inbound_max_msgs,
            runs_max_bytes=self.runs_max_bytes,
            runs_max_msgs=self.runs_max_msgs,
            replies_max_bytes=self.replies_max_bytes,
            replies_max_msgs=self.replies_max_msgs,
            dead_letters_max_bytes=self.dead_letters_max_bytes,
            dead_letters_max_msgs=self.dead_letters_max_msgs,
        )
