"""What every platform's shared models derive from: its name, its config, its part of a reply target."""

from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, SecretStr


class Platform(StrEnum):
    """The one declaration of each platform's name (bus subjects, database rows, configs)."""

    DINGTALK = "dingtalk"
    FEISHU = "feishu"


class ConfigWithSecrets(BaseModel):
    """A config whose `secret_fields` are stored encrypted, apart from the rest."""

    model_config = ConfigDict(extra="forbid")

    secret_fields: ClassVar[frozenset[str]] = frozenset()
    # The fields that say where the secrets are sent: changing one needs the secrets entered again.
    destination_fields: ClassVar[frozenset[str]] = frozenset()

    def split(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(public config, secrets in clear) with unset optional fields left out."""
        public: dict[str, Any] = {}
        secrets: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if name in self.secret_fields:
                secrets[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
            else:
                public[name] = value
        return public, secrets


class PlatformConfig(ConfigWithSecrets):
    """Base of the platform configs; `secret_fields` go encrypted into `channels.secrets_enc`."""

    platform: ClassVar[Platform]


class PlatformReplyData(BaseModel):
    """The part of a reply target only one platform reads, tagged by `platform`.

    Every field has a default: a target that carries none reads as the empty part."""

    model_config = ConfigDict(frozen=True)

    platform: Platform

    @classmethod
    def empty(cls) -> Self:
        return cls.model_validate({})
