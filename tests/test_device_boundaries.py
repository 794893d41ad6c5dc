"""The device backends and the shared pv pieces they use never reach for the Domain."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "hospes"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_devices_and_their_pv_helpers_do_not_import_the_domain() -> None:
    files = sorted((SRC / "devices").rglob("*.py")) + sorted((SRC / "pv" / "store").rglob("*.py"))
    files += [SRC / "pv" / name for name in ("grant.py", "ring.py", "evtchn.py")]
    files.append(SRC / "pv" / "hypercalls" / "grant.py")
    offenders = [str(f.relative_to(SRC)) for f in files
                 if any(m == "hospes.domain" or m.startswith("hospes.domain.") for m in imported_modules(f))]
    assert offenders == []
