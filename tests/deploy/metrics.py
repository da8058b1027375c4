"""The Prometheus series the services expose, read from their metric definitions.

Each service declares its metrics in `services/<name>/imgate_*/metrics.py` (module level on the
default registry; the admin API's on a registry of its own, per app), and the router adds
FastStream's bus metrics under the `imgate_bus` prefix. Series names are what a scrape shows:
counters gain `_total`, histograms `_bucket`/`_sum`/`_count`.
"""

import importlib
from functools import cache

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from tests.deploy.workspace import ROOT

# The prefix the router gives FastStream's Prometheus middleware (imgate_router.main).
BUS_PREFIX = "imgate_bus"
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
}


def series(metric: MetricWrapperBase) -> dict[str, frozenset[str]]:
    """Series name → its label names, for one metric object."""
    labels = frozenset(metric._labelnames)  # the names it was declared with
    found = {}
    for described in metric.describe():
        for suffix in SUFFIXES[described.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            found[described.name + suffix] = labels | extra
    return found


def _collectors(obj: object) -> list[MetricWrapperBase]:
    names = getattr(type(obj), "__slots__", ()) or vars(obj)
    return [m for n in names if isinstance(m := getattr(obj, n, None), MetricWrapperBase)]


def metrics_modules() -> list[str]:
    """`imgate_connector.metrics`, ...: every service package's metrics module."""
    return sorted(f"{p.parent.name}.metrics" for p in ROOT.glob("services/*/imgate_*/metrics.py"))


@cache
def defined() -> dict[str, frozenset[str]]:
    """Every series any service can expose, with its label names."""
    found: dict[str, frozenset[str]] = {}
    for name in metrics_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                found |= series(value)
    from imgate_admin.metrics import AdminMetrics

    for metric in _collectors(AdminMetrics()):
        found |= series(metric)
    from faststream.prometheus.container import MetricsContainer

    container = MetricsContainer(CollectorRegistry(), metrics_prefix=BUS_PREFIX, custom_label_names=())
    for metric in _collectors(container):
        found |= series(metric)
    return found
