"""What machine the figures came from (for the report header)."""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hospesbench.build import ROOT

KVM_GET_API_VERSION = 0xAE00


def _first_line(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kvm_flavour() -> str:
    """Which KVM this is; on PVM (kvm_pvm) guest CPL 3 runs natively, CPL 0 is emulated."""
    mods = Path("/sys/module")
    api = None
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        try:
            api = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        finally:
            os.close(fd)
    except OSError:
        pass
    api_s = f", API {api}" if api is not None else ", /dev/kvm not usable"
    flags = cpu_flags()
    if (mods / "kvm_pvm").exists():
        return ("PVM (module kvm_pvm; no vmx/svm, the host is itself a guest; "
                "guest CPL 3 runs natively, CPL 0 is emulated" + api_s + ")")
    if (mods / "kvm_intel").exists() or "vmx" in flags:
        return "VT-x (kvm_intel" + api_s + ")"
    if (mods / "kvm_amd").exists() or "svm" in flags:
        return "AMD-V (kvm_amd" + api_s + ")"
    return "unknown" + api_s


def tsc_khz() -> int | None:
    """The TSC frequency KVM reports for a vCPU (KVM_GET_TSC_KHZ); /proc/cpuinfo's MHz as a fallback."""
    try:
        from hospes.kvm import Kvm

        kvm = Kvm()
        try:
            vm = kvm.create_vm()
            try:
                vcpu = vm.create_vcpu(0)
                try:
                    return int(vcpu.get_tsc_khz())
                finally:
                    vcpu.close()
            finally:
                vm.close()
        finally:
            kvm.close()
    except Exception:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_busy(interval: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``interval`` s (/proc/stat): other work competing with the bench."""
    def sample() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return sum(f[:8]), idle

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError):
        pass
    return "? RAM"


def hospes_commit() -> str:
    """The checked-out commit, read from .git's files (no git command is run)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        path = git / ref
        if path.exists():
            return f"{path.read_text().strip()[:12]} ({ref.rsplit('/', 1)[-1]})"
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return f"{line.split()[0][:12]} ({ref.rsplit('/', 1)[-1]})"
    except OSError:
        pass
    return "unknown"


def source_digest() -> str:
    """SHA-256 (12 hex digits) over Hospes' sources as they are on disk, committed or not.

    Taken at the start and the end of a run: if they differ, the tree was
    edited while the bench ran and the figures mix two versions of Hospes.
    """
    import hashlib

    h = hashlib.sha256()
    src = ROOT / "src" / "hospes"
    for path in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in (".py", ".S", ".sh")):
        h.update(str(path.relative_to(src)).encode() + b"\0")
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:12]


def machine_info(qemu: str | None = "qemu-system-x86_64") -> dict[str, str]:
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": memory_total(),
        "kernel": f"{platform.release()} ({platform.machine()})",
        "kvm": kvm_flavour(),
        "os": os_name(),
        "python": sys.version.split()[0],
        "qemu": (_first_line([qemu, "--version"]) or "no QEMU") if qemu else "no QEMU",
        "gcc": _first_line(["gcc", "-dumpfullversion"]) or "?",
        "tsc_khz": str(tsc_khz() or "?"),
        "loadavg_at_start": load_average(),
    }
