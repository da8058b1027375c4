"""deploy/k8s renders with kustomize, and every rendered object is valid Kubernetes, offline.

Schemas: the kubernetes-validate package (the API's OpenAPI schemas per release, strict: an
unknown field is an error). Checked against the oldest release we support and the newest the
package knows.
"""

from typing import Any

import pytest

from tests.deploy import kustomize

OLDEST_SUPPORTED = "1.30.0"


@pytest.fixture(scope="module")
def validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: it belongs in the workspace's dev group "
            "(kubernetes-validate>=1.37.0); the rendered manifests cannot be checked without it"
        )
    return kubernetes_validate


def test_kubectl_has_kustomize_v5() -> None:
    assert kustomize.kustomize_version() >= kustomize.MIN_KUSTOMIZE


def test_both_overlays_and_their_parts_are_kustomizations() -> None:
    assert set(kustomize.KUSTOMIZATIONS) == {
        "base",
        "nats/single",
        "nats/cluster",
        "overlays/dev",
        "overlays/prod",
        "components/prometheus-operator",
        "components/directory-egress",
    }


@pytest.mark.parametrize("path", kustomize.KUSTOMIZATIONS)
def test_every_kustomization_renders(path: str) -> None:
    objects = kustomize.render(path)
    assert objects, f"deploy/k8s/{path} rendered nothing"
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), f"duplicate objects in {path}"


def schema_versions(validator: Any) -> list[str]:
    return sorted({OLDEST_SUPPORTED, validator.latest_version()})


@pytest.mark.parametrize("overlay", kustomize.OVERLAYS)
def test_every_rendered_object_matches_the_kubernetes_schema(validator: Any, overlay: str) -> None:
    failures = []
    for obj in kustomize.overlay(overlay):
        for version in schema_versions(validator):
            try:
                validator.validate(obj, version, strict=True)
            except validator.ValidationError as exc:
                failures.append(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_the_schema_check_catches_a_misspelt_field(validator: Any) -> None:
    deployment = kustomize.one(kustomize.overlay("dev"), "Deployment", "router")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(validator.ValidationError):
        validator.validate(broken, validator.latest_version(), strict=True)


@pytest.mark.parametrize("overlay", kustomize.OVERLAYS)
def test_objects_land_in_the_overlays_namespace(overlay: str) -> None:
    expected = {"dev": "imgate-dev", "prod": "imgate"}[overlay]
    for obj in kustomize.overlay(overlay):
        assert obj["metadata"].get("namespace") == expected, f"{obj['kind']}/{obj['metadata']['name']}"
