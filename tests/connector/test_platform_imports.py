"""A platform package uses the connector only through its public API (`imgate_connector.platform_api`):
the core can change inside without a platform noticing, and a platform never reaches another."""

import ast
from pathlib import Path

import pytest

import imgate_connector

CONNECTOR = Path(imgate_connector.__file__).parent
PUBLIC_API = "imgate_connector.platform_api"
PLATFORM_PACKAGES = sorted(p for p in (CONNECTOR / "platforms").iterdir() if (p / "__init__.py").is_file())


def _imported(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    """Every module a file imports, absolute (relative imports resolved against `module`)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.rsplit(".", node.level)[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from imgate_connector import media` names a module too.
            found += [
                (node.lineno, f"{name}.{alias.name}") for alias in node.names if name == "imgate_connector"
            ]
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def forbidden_imports(package: Path, root: Path = CONNECTOR.parent) -> list[str]:
    """`path:line module` for each import of the connector other than the public API and the
    platform's own package (`root`: the directory holding `imgate_connector`)."""
    own = f"imgate_connector.platforms.{package.name}"
    wrong: list[str] = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)  # __init__ counts as a level
        for line, name in _imported(ast.parse(path.read_text(), str(path)), module):
            # The bare package is fine: what is imported from it is listed module by module.
            if name == "imgate_connector" or name == PUBLIC_API or _within(name, own):
                continue
            if _within(name, "imgate_connector"):
                wrong.append(f"{path.relative_to(root)}:{line} {name}")
    return wrong


def test_there_are_platform_packages_to_check() -> None:
    assert [p.name for p in PLATFORM_PACKAGES] and "dingtalk" in [p.name for p in PLATFORM_PACKAGES]


@pytest.mark.parametrize("package", PLATFORM_PACKAGES, ids=lambda p: p.name)
def test_a_platform_imports_only_the_public_api_of_the_connector(package: Path) -> None:
    assert forbidden_imports(package) == []


def test_the_rule_catches_an_import_of_a_connector_internal(tmp_path: Path) -> None:
    package = tmp_path / "imgate_connector" / "platforms" / "demo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "adapter.py").write_text(
        "from imgate_connector.platform_api import PlatformAdapter\n"
        "from imgate_connector.platforms.demo import frames\n"
        "from . import translate\n"
        "from imgate_connector.metrics import INBOUND\n"
        "import imgate_connector.scheduler\n"
        "from imgate_connector import media\n"
        "from ..base import ReplySurface\n"
    )
    wrong = forbidden_imports(package, tmp_path)
    assert [w.split(" ")[1] for w in wrong] == [
        "imgate_connector.metrics",
        "imgate_connector.scheduler",
        "imgate_connector.media",
        "imgate_connector.platforms.base",
    ]
