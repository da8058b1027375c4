"""A channel's user-mapping settings (how an IM identity becomes one of our users), shared by
admin-api (validation) and the router. Each platform's connection config is declared with the
platform, in `imgate_common.platforms`."""

from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, StringConstraints, TypeAdapter, field_validator

from imgate_common.fields import HttpUrlStr
from imgate_common.platforms import ConfigWithSecrets

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


EMPLOYEE_PLACEHOLDER = "{employee_id}"
LEGACY_EMPLOYEE_PLACEHOLDER = "{staff_id}"


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
    # {user_id} is the platform's user id, {employee_id} the employee id when the platform sends one.
    user_filter: str = Field("(employeeNumber={employee_id})", min_length=1, max_length=500)
    username_attribute: Attribute = "uid"
    email_attribute: Attribute = "mail"
    display_name_attribute: Attribute = "cn"
    # When the directory knows nobody: create a user as `auto` does (true) or refuse to answer.
    fallback_to_auto: bool = True

    @field_validator("user_filter")
    @classmethod
    def _employee_id_placeholder(cls, value: str) -> str:
        """Filters written before 0004 named the employee id by DingTalk's word for it."""
        return value.replace(LEGACY_EMPLOYEE_PLACEHOLDER, EMPLOYEE_PLACEHOLDER)


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
