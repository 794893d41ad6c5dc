"""The rules of docs/architecture.md that a contributor can break without noticing.

Imports point only down the layers: kvm -> machine -> pv -> devices -> domain
-> (cgroup, images) -> toolstack -> cli. Every import counts, including those
inside functions and under TYPE_CHECKING: a type-only upward import is still
the upper layer's shape leaking down.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS: list[set[str]] = [
    {"hospes.cputime", "hospes.errors", "hospes.files", "hospes.state", "hospes.version"},
    {"hospes.kvm"},
    {"hospes.machine"},
    {"hospes.pv"},
    {"hospes.devices"},
    {"hospes.domain"},
    {"hospes.bootloader", "hospes.cgroup", "hospes.images", "hospes.migrate"},
    {"hospes.toolstack"},
    {"hospes.cli"},
    {"hospes", "hospes.__main__"},
]

# Inside pv: the hypercall handlers sit on top of the core they call. Only the
# package that builds the dispatch table, and the PV domain that installs it,
# may import them.
HYPERCALLS = "hospes.pv.hypercalls"
MAY_IMPORT_HYPERCALLS = {"hospes.pv.pvdomain"}


def layer_of(module: str) -> int:
    best = -1
    best_len = -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "hospes"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "hospes":
                continue
            # `from hospes.pv import abi` imports hospes.pv.abi
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else name))
    return found


def _is_module(name: str) -> bool:
    p = SRC.joinpath(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


SOURCES = sorted(SRC.rglob("*.py"))


def test_the_layers_cover_every_module():
    for path in SOURCES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_point_only_down_the_layers(path: Path):
    module = module_name(path)
    mine = layer_of(module)
    upward = [f"line {line}: {name}" for line, name in imports_of(path, module) if layer_of(name) > mine]
    assert not upward, f"{module} imports from a layer above it: {upward}"


@pytest.mark.parametrize("path", [p for p in SOURCES if module_name(p).startswith("hospes.pv.")],
                         ids=lambda p: module_name(p))
def test_no_pv_core_module_imports_a_hypercall_handler(path: Path):
    module = module_name(path)
    if module.startswith(HYPERCALLS) or module in MAY_IMPORT_HYPERCALLS:
        return
    bad = [f"line {line}: {name}" for line, name in imports_of(path, module)
           if name == HYPERCALLS or name.startswith(HYPERCALLS + ".")]
    assert not bad, f"{module} is PV core and imports hypercall handlers: {bad}"


def test_the_rule_catches_an_upward_import(tmp_path: Path):
    fake = SRC / "hospes" / "pv" / "x.py"
    text = "from hospes.domain import Domain\nfrom . import abi\n"
    tree_path = tmp_path / "x.py"
    tree_path.write_text(text)
    found = imports_of(tree_path, "hospes.pv.x")
    assert (1, "hospes.domain") in found and (2, "hospes.pv.abi") in found
    assert layer_of("hospes.domain") > layer_of(module_name(fake))


def test_every_hypercall_handler_is_typed():
    from hospes.pv.hypercalls import build_table

    for nr, handler in build_table().items():
        sig = inspect.signature(handler)
        untyped = [p.name for p in sig.parameters.values()
                   if p.annotation is inspect.Parameter.empty and p.kind is not p.VAR_POSITIONAL]
        assert not untyped, f"hypercall {nr} ({handler.__module__}.{handler.__name__}) has untyped {untyped}"
        assert sig.return_annotation is not inspect.Parameter.empty, f"hypercall {nr} has no return type"
