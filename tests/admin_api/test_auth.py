"""The bearer token guards /api; health and the OpenAPI docs stay open."""

import httpx
import pytest

from .conftest import ADMIN_TOKEN


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
    ],
    ids=["missing", "wrong", "longer", "basic-scheme", "no-scheme"],
)
@pytest.mark.parametrize("path", ["/api/v1/agents", "/api/v1/channels", "/api/v1/channels/1/status"])
async def test_api_refuses_requests_without_the_token(
    anon_client: httpx.AsyncClient, headers: dict[str, str], path: str
) -> None:
    response = await anon_client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert error["message"]


async def test_writes_are_refused_before_the_body_is_looked_at(anon_client: httpx.AsyncClient) -> None:
    response = await anon_client.post("/api/v1/agents", json={"name": "x", "provider": "local"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_the_right_token_is_accepted(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/agents")).status_code == 200


async def test_healthz_needs_no_token(anon_client: httpx.AsyncClient) -> None:
    response = await anon_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_openapi_and_docs_need_no_token(anon_client: httpx.AsyncClient) -> None:
    docs = await anon_client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    schema = (await anon_client.get("/openapi.json")).json()
    assert "/api/v1/channels" in schema["paths"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


async def test_docs_page_uses_only_bundled_assets(anon_client: httpx.AsyncClient) -> None:
    page = await anon_client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "/docs-assets/swagger-ui-bundle.js" in page.text
    script = await anon_client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
