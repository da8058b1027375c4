"""Settings shared by every service; each service extends `CommonSettings` with its own prefix."""

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Local runs keep everything under ./.data so a clone is self-contained and easy to wipe.
DEFAULT_DATA_DIR = Path(".data")


class CommonSettings(BaseSettings):
    """Connection URLs and process-wide knobs; the URLs use the unprefixed names operators expect."""

    model_config = SettingsConfigDict(env_prefix="IMGATE_", extra="ignore")

    nats_url: str = Field(
        "nats://127.0.0.1:4222", validation_alias=AliasChoices("NATS_URL", "IMGATE_NATS_URL")
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "IMGATE_REDIS_URL")
    )
    database_url: str = Field(
        "sqlite+aiosqlite:///.data/imgate.db",
        validation_alias=AliasChoices("DATABASE_URL", "IMGATE_DATABASE_URL"),
    )
    data_dir: Path = DEFAULT_DATA_DIR
    # Fernet keys, comma-separated, newest first. Empty: a key file under data_dir is created
    # (fine for a laptop; production passes the key from a Kubernetes secret).
    secret_keys: str = ""
    log_format: str = "console"  # "json" in production
    log_level: str = "INFO"
    # Stream replicas: 1 on a single node, 3 on a clustered JetStream in production.
    stream_replicas: int = 1
    # Namespace for every Redis key, so several installations can share one Redis.
    redis_prefix: str = "imgate"
    instance_id: str = ""  # defaults to hostname:pid at start-up
