"""Prometheus plumbing shared by the services: the `/metrics` listener and common buckets.

Each service defines its own metrics (in its `metrics` module) on the default registry, one
process per service; FastStream's middleware adds bus-level figures where FastStream consumes.
"""

from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import start_http_server

log = structlog.get_logger()

# Seconds; from a quick ACK to a slow model answer.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class MetricsServer:
    """Serves the default registry on a port of its own, in a thread, until closed."""

    def __init__(self, port: int, host: str) -> None:
        self.port: int | None = None
        self._server: WSGIServer | None = None
        if port < 0:
            return
        try:
            self._server, _thread = start_http_server(port, addr=host)
        except OSError as exc:
            # The service still does its work; the operator sees why the scrape fails.
            log.error("metrics_port_unavailable", port=port, error=str(exc))
            return
        self.port = self._server.server_port
        log.info("metrics_serving", port=self.port, path="/metrics")

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
