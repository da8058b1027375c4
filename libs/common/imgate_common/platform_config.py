"""A channel's configuration models, shared by admin-api (validation) and the services that run it.

Each platform's connection config (used by the connector), and the user-mapping settings (used by
the router). Adding a platform means one model here and one registry line.
"""

from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, StringConstraints, TypeAdapter

from imgate_common.fields import HttpUrlStr


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

    platform: ClassVar[str]


class DingTalkConfig(PlatformConfig):
    platform: ClassVar[str] = "dingtalk"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"client_secret"})
    destination_fields: ClassVar[frozenset[str]] = frozenset({"openapi_endpoint"})

    client_id: str = Field(min_length=1, max_length=200, description="AppKey of the DingTalk app")
    client_secret: SecretStr = Field(min_length=1, description="AppSecret; stored encrypted")
    # Private deployments and imsim stand in for api.dingtalk.com through this override.
    openapi_endpoint: HttpUrlStr | None = None
    robot_code: str | None = Field(None, min_length=1, max_length=200)
    # A channel's own AI card template, and the key its text lives under.
    card_template_id: str | None = Field(None, min_length=1, max_length=200)
    card_content_key: str | None = Field(None, min_length=1, max_length=100)


PLATFORM_CONFIGS: dict[str, type[PlatformConfig]] = {}


def register(config: type[PlatformConfig]) -> None:
    if config.platform in PLATFORM_CONFIGS:
        raise ValueError(f"platform {config.platform!r} registered twice")
    PLATFORM_CONFIGS[config.platform] = config


register(DingTalkConfig)

# What `config` may hold in a request body (for validation order and the OpenAPI schema).
AnyPlatformConfig = DingTalkConfig


def secret_fields(platform: str) -> frozenset[str]:
    config = PLATFORM_CONFIGS.get(platform)
    return config.secret_fields if config else frozenset()


# --- user mapping: how an IM identity becomes one of our users ---------------------------------


def _ldap_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ldap", "ldaps") or not parts.netloc:
        raise ValueError("must be an ldap:// or ldaps:// URL")
    return value


LdapUrlStr = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=500), AfterValidator(_ldap_url)
]
Dn = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Attribute = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class AutoUserMapping(ConfigWithSecrets):
    """A user is created on first contact from what the platform tells about the sender."""

    mode: Literal["auto"] = "auto"


class LdapUserMapping(ConfigWithSecrets):
    """The sender is looked up in a directory; secrets go to `channels.user_mapping_secrets_enc`."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"bind_password"})
    destination_fields: ClassVar[frozenset[str]] = frozenset({"url"})

    mode: Literal["ldap"]
    url: LdapUrlStr
    bind_dn: Dn
    bind_password: SecretStr = Field(min_length=1, max_length=500, description="stored encrypted")
    base_dn: Dn
    # {user_id} is the platform's user id, {staff_id} the employee id when the platform sends one.
    user_filter: str = Field("(employeeNumber={staff_id})", min_length=1, max_length=500)
    username_attribute: Attribute = "uid"
    email_attribute: Attribute = "mail"
    display_name_attribute: Attribute = "cn"
    # When the directory knows nobody: create a user as `auto` does (true) or refuse to answer.
    fallback_to_auto: bool = True


class HttpUserMapping(ConfigWithSecrets):
    """The sender is looked up over HTTP (an ERP or HR service): POST {url} with the identity as
    JSON → {username, email, display_name}, 404 or `found: false` for nobody."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key"})
    destination_fields: ClassVar[frozenset[str]] = frozenset({"url"})

    mode: Literal["http"]
    url: HttpUrlStr
    api_key: SecretStr | None = Field(None, min_length=1, max_length=500, description="stored encrypted")
    timeout_s: float = Field(5.0, gt=0, le=60, allow_inf_nan=False)
    fallback_to_auto: bool = True


class StaticUserMapping(ConfigWithSecrets):
    """Everyone who writes to the channel is this one user (a shared service account)."""

    mode: Literal["static"]
    username: str = Field(min_length=1, max_length=200)
    email: str | None = Field(None, max_length=320)
    display_name: str | None = Field(None, max_length=200)


USER_MAPPINGS: dict[str, type[ConfigWithSecrets]] = {
    "auto": AutoUserMapping,
    "ldap": LdapUserMapping,
    "http": HttpUserMapping,
    "static": StaticUserMapping,
}

AnyUserMapping = Annotated[
    AutoUserMapping | LdapUserMapping | HttpUserMapping | StaticUserMapping, Field(discriminator="mode")
]
USER_MAPPING: TypeAdapter[AutoUserMapping | LdapUserMapping | HttpUserMapping | StaticUserMapping] = (
    TypeAdapter(AnyUserMapping)
)


def parse_user_mapping(
    public: dict[str, Any], secrets: dict[str, Any]
) -> AutoUserMapping | LdapUserMapping | HttpUserMapping | StaticUserMapping:
    """A channel's user mapping from its `user_mapping` column and its decrypted secrets."""
    return USER_MAPPING.validate_python({"mode": "auto", **public, **secrets})
