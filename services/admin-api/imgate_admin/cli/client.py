"""The CLI's HTTP client of the admin API: one method per call, API errors as `ApiError`."""

from collections.abc import Callable
from typing import Any

import httpx

from imgate_admin.destinations import ENTER_AGAIN


class CliError(Exception):
    """A failure to report on stderr with exit code 1."""


class ApiError(CliError):
    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.details = details or []

    def with_reentry_hint(self, how: Callable[[str], str]) -> CliError:
        """This error, and for each secret the API asks to enter again (its destination changed)
        how to give it on the command line: `how(field)`, the field as the API names it."""
        fields = [str(d.get("loc")) for d in self.details if str(d.get("msg", "")).endswith(ENTER_AGAIN)]
        if not fields:
            return self
        hints = "\n".join(f"  {how(f)}" for f in fields)
        return CliError(f"{self}\nthe new destination gets no stored secret; enter it again:\n{hints}")


class AdminClient:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    def close(self) -> None:
        self._http.close()

    def call(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> tuple[Any, httpx.Headers]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=query)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the admin API at {self.url} ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise _api_error(response)
        data = response.json() if response.content else None
        return data, response.headers

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)[0]

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body=body)[0]

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, body=body)[0]

    def delete(self, path: str) -> None:
        self.call("DELETE", path)


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        return ApiError(response.status_code, str(error["code"]), str(error["message"]), details)
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.reason_phrase or "request failed")
