"""Prometheus metrics of the admin API and the middleware that times and traces every request."""

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

tracer = trace.get_tracer("imgate.admin_api")

STATIC_MOUNTS = ("/console",)


class AdminMetrics:
    """One registry per app (not the global one), so several apps in one process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "imgate_admin_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "imgate_admin_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )
        self.control_requests = Counter(
            "imgate_admin_control_requests",
            "Control requests sent to connectors, by action and outcome",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.channels = Gauge(
            "imgate_admin_channels",
            "Channels by live state, as of the last scrape",
            ["state"],
            registry=self.registry,
        )
        self.agent_tests = Counter(
            "imgate_admin_agent_tests",
            'Runs of "test this agent", by provider and result',
            ["provider", "result"],
            registry=self.registry,
        )


def _route_template(scope: Scope) -> str:
    """The template (/api/v1/channels/{channel_id}), never the raw path: ids would explode the
    label space, and unmatched paths are whatever a scanner sends."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str) or not template:
        path = str(scope.get("path", ""))
        # Mounted static files (the console) set no route in the scope.
        return next((f"{p}/*" for p in STATIC_MOUNTS if path.startswith(f"{p}/")), "unmatched")
    if isinstance(route, Mount):
        return f"{template}/*"
    # A route of an included router may know its path relative to the router only; the prefix
    # is then the part of the request path in front of as many segments as the template has.
    depth = template.count("/")
    prefix = "/".join(str(scope.get("path", "")).split("/")[:-depth]) if depth else ""
    return template if prefix and template.startswith(prefix + "/") else prefix + template


class RequestMetricsMiddleware:
    """Counts and times each request, in a server span named after its route template."""

    def __init__(self, app: ASGIApp, metrics: AdminMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        status = 500  # what the client sees if the app fails before answering
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        # record_exception=False: an exception's text may quote a driver's parameters; the span
        # keeps the status code only, the traceback goes to the server log.
        with tracer.start_as_current_span(
            f"{method} request", kind=SpanKind.SERVER, record_exception=False
        ) as span:
            try:
                await self.app(scope, receive, send_and_record)
            finally:
                route = _route_template(scope)
                elapsed = time.perf_counter() - started
                self.metrics.http_requests.labels(method, route, str(status)).inc()
                self.metrics.http_duration.labels(method, route).observe(elapsed)
                # Attributes name the route and status only: no query string, header or body.
                attributes: dict[str, Any] = {
                    "http.request.method": method,
                    "http.route": route,
                    "http.response.status_code": status,
                }
                span.update_name(f"{method} {route}")
                span.set_attributes(attributes)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
