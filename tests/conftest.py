"""Shared fixtures: running `hospes` as a user would, and the default images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_hospes(*args: str, timeout: float = 240, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "hospes", *args],
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def default_images():
    from hospes.images import ensure_default_images

    return ensure_default_images(log=lambda m: None)


@pytest.fixture()
def hospes_cli():
    return run_hospes


__all__ = ["run_hospes", "Path"]
