"""Which failures the delivery policy retries and which end a message at once."""

import sqlalchemy.exc

from imgate_common.consume import classify
from imgate_common.errors import ConfigurationError, FailureCategory, ProviderError


def db_error(kind: type[sqlalchemy.exc.DBAPIError], message: str) -> sqlalchemy.exc.DBAPIError:
    return kind("INSERT …", {}, Exception(message))


def test_dependencies_out_of_reach_and_write_races_are_retried() -> None:
    for error in (
        ConnectionRefusedError("redis"),
        TimeoutError(),
        db_error(sqlalchemy.exc.OperationalError, "connection lost"),
        db_error(sqlalchemy.exc.IntegrityError, 'duplicate key value violates "users_username_key"'),
        ProviderError("overloaded", transient=True),
    ):
        assert not classify(error).permanent, error


def test_a_transient_cause_makes_its_wrapper_transient() -> None:
    try:
        try:
            raise ConnectionResetError("peer")
        except ConnectionResetError as exc:
            raise RuntimeError("could not load the channel") from exc
    except RuntimeError as wrapped:
        assert not classify(wrapped).permanent


def test_mistakes_and_bugs_end_the_message_at_once_with_their_category() -> None:
    misconfigured = classify(ConfigurationError("LDAP user_filter '(uid={uid})' cannot be filled"))
    assert misconfigured.permanent and misconfigured.category == FailureCategory.MISCONFIGURED
    assert misconfigured.describe() == "configuration: LDAP user_filter '(uid={uid})' cannot be filled"
    bug = classify(AttributeError("'NoneType' object has no attribute 'get'"))
    assert bug.permanent and bug.category == FailureCategory.INTERNAL and bug.error_type == "AttributeError"
    assert classify(db_error(sqlalchemy.exc.DataError, "value too long")).permanent
    assert classify(ProviderError("bad key", FailureCategory.AUTH_FAILED)).permanent
