"""Access tokens as every platform's OpenAPI hands them out: each belongs to one app and lives
a while; imsim can also expire an app's tokens at once."""

import time
from dataclasses import dataclass, field


@dataclass
class Grant:
    app_id: str
    expires_at: float  # monotonic


@dataclass
class TokenStore:
    grants: dict[str, Grant] = field(default_factory=dict)

    def issue(self, token: str, app_id: str, ttl: float) -> None:
        now = time.monotonic()
        for stale in [t for t, g in self.grants.items() if g.expires_at < now - ttl]:
            del self.grants[stale]  # long dead: an expired token's calls are counted a while only
        self.grants[token] = Grant(app_id, now + ttl)

    def valid_owner(self, token: str) -> str | None:
        """The app id of a token that has not expired."""
        grant = self.grants.get(token)
        return grant.app_id if grant is not None and grant.expires_at > time.monotonic() else None

    def owner(self, token: str) -> str | None:
        """The app id a token was issued to, expired or not (to count its refused calls)."""
        grant = self.grants.get(token)
        return grant.app_id if grant is not None else None

    def longest_lived(self, app_id: str) -> tuple[str, float] | None:
        """The app's token with the most time left, and that time in seconds."""
        now = time.monotonic()
        live = [
            (t, g.expires_at - now)
            for t, g in self.grants.items()
            if g.app_id == app_id and g.expires_at > now
        ]
        return max(live, key=lambda item: item[1]) if live else None

    def expire(self, app_id: str) -> int:
        """Expire the app's live tokens now; how many."""
        now = time.monotonic()
        expired = 0
        for grant in self.grants.values():
            if grant.app_id == app_id and grant.expires_at > now:
                grant.expires_at = now
                expired += 1
        return expired
