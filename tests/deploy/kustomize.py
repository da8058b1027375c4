"""Renders the kustomizations under deploy/k8s with kustomize as built into kubectl (v5).

kubectl ships in the machine image of every kind this project runs on, and `kubectl kustomize`
needs no cluster. No Python or npm package carries kustomize itself, and a home-made renderer
would prove only that it agrees with itself.
"""

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.workspace import ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# Every directory holding a kustomization.yaml, each rendered on its own as well.
KUSTOMIZATIONS = tuple(sorted(p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml")))
MIN_KUSTOMIZE = (5, 0)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not on PATH: the deploy tests render deploy/k8s with `kubectl kustomize` "
            "(kustomize v5 built in). Install kubectl, or kustomize v5 and link it as kubectl."
        )
    return path


@cache
def kustomize_version() -> tuple[int, int]:
    out = subprocess.run(
        [kubectl(), "version", "--client"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out)
    assert match, f"kubectl does not report a built-in kustomize:\n{out}"
    return int(match.group(1)), int(match.group(2))


@cache
def render_dir(directory: Path) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize <directory>` prints."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        pytest.fail(f"kustomize could not render {directory.relative_to(ROOT)}:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(path: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize deploy/k8s/<path>` prints."""
    return render_dir(K8S / path)


def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return render(f"overlays/{name}")


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """Workload name → pod template, for Deployments, StatefulSets and Jobs."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "Job")
    }
