"""/healthz, /readyz and /metrics."""

import httpx

from imgate_admin.deps import Resources

from .conftest import create_channel


async def test_readyz_reports_every_dependency(anon_client: httpx.AsyncClient, resources: Resources) -> None:
    ready = await anon_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ok": True, "checks": {"database": "ok", "nats": "ok", "redis": "ok"}}
    await resources.nc.close()  # as if NATS went away
    down = await anon_client.get("/readyz")
    assert down.status_code == 503
    assert down.json() == {"ok": False, "checks": {"database": "ok", "nats": "unreachable", "redis": "ok"}}
    assert (await anon_client.get("/healthz")).json() == {"ok": True}  # the process itself is fine


async def test_metrics_need_the_token_and_count_requests_channels_and_control(
    client: httpx.AsyncClient, anon_client: httpx.AsyncClient
) -> None:
    assert (await anon_client.get("/metrics")).status_code == 401
    await create_channel(client, "counted")
    await client.get("/api/v1/channels/4242")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'imgate_admin_http_requests_total{method="POST",route="/api/v1/channels",status="201"} 1.0' in text
    assert 'route="/api/v1/channels/{channel_id}",status="404"' in text
    assert 'imgate_admin_channels{state="disconnected"}' in text
    assert 'imgate_admin_control_requests_total{action="start"' in text
    assert "imgate_admin_http_request_duration_seconds_bucket" in text
