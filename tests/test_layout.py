"""The packages' import rules, read from the source: hpo imports segtrain, never the reverse; in hpo,
plan below search, report beside search, finalize on top, the shared modules at the bottom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOTTOM = {"hpo.space", "hpo.spec", "hpo.trials", "hpo.markdown", "hpo.storage_urls", "hpo.cli"}
# what each part of hpo may import from hpo, besides itself
ALLOWED = {
    "bottom": BOTTOM,
    "hpo.plan": BOTTOM,
    "hpo.search": BOTTOM | {"hpo.plan"},
    "hpo.report": BOTTOM,
    "hpo.finalize": BOTTOM | {"hpo.plan", "hpo.search", "hpo.report"},
}


def part(module: str) -> str:
    """The package a module belongs to (hpo.plan.cost -> hpo.plan), or "bottom" for the shared modules."""
    head = ".".join(module.split(".")[:2])
    return "bottom" if head in BOTTOM or head == "hpo" else head


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (from x import y counts x.y too, as y may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources("segtrain"), ids=lambda p: module_name(p))
def test_segtrain_never_imports_hpo(path):
    assert not any(name == "hpo" or name.startswith("hpo.") for name in imports(path))


@pytest.mark.parametrize("path", sources("hpo"), ids=lambda p: module_name(p))
def test_hpo_imports_only_downwards(path):
    own = part(module_name(path))
    others = {part(name) if part(name) != "bottom" else ".".join(name.split(".")[:2])
              for name in imports(path) if name.startswith("hpo.")}
    upwards = {name for name in others if name != own and name not in ALLOWED[own]}
    assert not upwards, f"{module_name(path)} ({own}) imports {sorted(upwards)}"


def test_every_package_says_what_it_is_for_and_what_it_may_import():
    for init in sorted((ROOT / "hpo").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower() and len(doc.splitlines()) >= 2, init
