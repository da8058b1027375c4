"""Seeds the compose demo: agent `local` and channel `demo` on imsim, through the admin API.

Run by the `demo-seed` service of docker-compose.yml (profile `demo`). Idempotent: what exists
by name is left alone. Standard library only, so it runs in any image with Python.
"""

import json
import os
import sys
import urllib.request
from typing import Any

ADMIN_URL = os.environ.get("ADMIN_URL", "http://admin-api:8780").rstrip("/")
TOKEN = os.environ["ADMIN_TOKEN"]
OPENAPI_ENDPOINT = os.environ.get("DEMO_OPENAPI_ENDPOINT", "http://imsim:8790")
# imsim is started with `--app demo-client:demo-secret`; these are that fake app's credentials.
CLIENT_ID = os.environ.get("DEMO_CLIENT_ID", "demo-client")
CLIENT_SECRET = os.environ.get("DEMO_CLIENT_SECRET", "demo-secret")
SYSTEM_PROMPT = "You are a friendly, concise assistant inside a company chat. Answer in the user's language."


def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{ADMIN_URL}/api/v1{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def find(path: str, name: str) -> dict[str, Any] | None:
    return next((item for item in call("GET", path) if item["name"] == name), None)


def main() -> int:
    agent = find("/agents", "local") or call(
        "POST", "/agents", {"name": "local", "provider": "local", "system_prompt": SYSTEM_PROMPT}
    )
    channel = find("/channels", "demo") or call(
        "POST",
        "/channels",
        {
            "name": "demo",
            "platform": "dingtalk",
            "config": {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "openapi_endpoint": OPENAPI_ENDPOINT,
            },
            "default_agent_id": agent["id"],
            "enabled": True,
        },
    )
    print(
        f"demo channel #{channel['id']} answers with agent '{agent['name']}' (provider {agent['provider']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
