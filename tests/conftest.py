"""Shared fixtures: running `hospes` as a user would, and the default images."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


def _load_guest_build():
    """tests/guests/build.py, loaded once under a private name (it is not a package)."""
    name = "hospes_tests_guests_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "guests" / "build.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


guest_build = _load_guest_build()


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


@pytest.fixture
def dom():
    """A PV domain without KVM over real guest memory (tests/pv_fakes.py), for hypercall unit tests."""
    from pv_fakes import FakePvDomain

    d = FakePvDomain()
    yield d
    d.close_memory()


@pytest.fixture
def vcpu(dom):
    """The fake domain's vCPU 0."""
    return dom.vcpus[0]


__all__ = ["run_hospes", "Path"]
