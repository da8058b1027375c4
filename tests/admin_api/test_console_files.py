"""The console's files: served by admin-api itself, with a policy that allows nothing from elsewhere."""

import re

import httpx


async def test_the_console_is_served_with_a_same_origin_policy(anon_client: httpx.AsyncClient) -> None:
    root = await anon_client.get("/")
    assert root.status_code == 307 and root.headers["location"] == "/console/"
    page = await anon_client.get("/console/")
    assert page.status_code == 200
    assert "<title>imgate console</title>" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        if asset.startswith("data:"):
            continue
        assert not asset.startswith(("http:", "https:", "//")), asset  # nothing from a CDN
        served = await anon_client.get(f"/console/{asset}")
        assert served.status_code == 200, asset
        assert "content-security-policy" in served.headers
        assert "http://" not in served.text and "https://" not in served.text.replace(
            "https://api.openai.com/v1", ""
        )
