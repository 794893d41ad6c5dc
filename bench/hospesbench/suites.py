"""The measurements. Each suite adds its figures to a shared ``Results``.

Suites, in the order ``bench/run.py`` runs them:

  floor    bench/c/kvm_exit.c (the C floor of each KVM path Hospes uses: plain
           exit, syscall-stub exit, sregs switch, trap exit, writer, in-KVM
           traps) and the nullcall PV guest (Hospes null hypercall, forced
           CPUID, bounced int3, mmu_update, update_va_mapping, HYPERVISOR_iret,
           kernel and user #PF bounces, user syscall round trip), interleaved
  boot     `hospes run -- uname -a` vs QEMU TCG and QEMU KVM with the same
           kernel, initramfs and command
  rootfs   (not in the default set: it needs the `hospes image --rootfs` disk)
           a Debian disk image to its login prompt: `hospes run --bootloader
           pygrub` vs QEMU TCG with the kernel and initrd read from the image
  cpu      bench/c/compute.c natively, in Hospes and under QEMU TCG
  os       bench/c/osbench.c natively, in Hospes and under QEMU TCG
  memory   RSS of the hospes process beyond the guest memory it touched
  devices  the PV block device (blkbench) natively and in Hospes, and in
           Hospes at queue depths 1, 4 and 16; TCP (netbench, one
           stream and 4 at once) guest <-> host and guest <-> guest through the PV
           network device, against two host namespaces joined by a veth pair

Exit counts (``hospes run --stats``) are collected from every Hospes run.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shlex
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hospesbench import netns, parse
from hospesbench.model import ENV_FLOOR, ENV_HOSPES, ENV_NATIVE, ENV_QKVM, ENV_TCG, Results
from hospesbench.report import DEVICES_NONE, FLOORS
from hospesbench.runner import ProcResult, Proc, run
from hospesbench.stats import median_counts, per_op_counts

USERSPACE = "hospes: userspace up"
EXIT_STATUS = "hospes-exit-status="
CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
IDLE_MARK = "bench-idle-begin"
MEMFD_PREFIX = "/memfd:hospes-guest"
GUEST_MIB = 256
BOOT_COMMAND = ["uname", "-a"]
USERSPACE_LIMIT_S = 180.0     # a guest not in userspace by then is stuck
_LOG_LOCK = threading.Lock()


@dataclass
class Plan:
    """How many repetitions of what (``--quick`` makes a smaller one)."""

    floor_iters: int = 10000
    floor_rounds: int = 6
    nullcall_boots: int = 3
    nullcall_n: int = 2000
    nullcall_rounds: int = 5
    boot_runs: int = 5
    rootfs_boots: int = 2
    qemu_kvm_timeout: float = 300.0
    compute_native_reps: int = 7
    compute_boots: int = 3
    compute_reps: int = 3
    os_native_samples: int = 7
    os_boots: int = 2
    os_samples: int = 5
    os_target_ms: int = 200
    idle_s: float = 8.0
    opexits_scale: float = 1.0
    opexits_baselines: int = 3
    blk_boots: int = 2
    blk_samples: int = 5
    net_boots: int = 2
    net_samples: int = 5
    net_mib: int = 64
    net_rounds: int = 500

    @classmethod
    def quick(cls) -> "Plan":
        return cls(floor_iters=5000, floor_rounds=3, nullcall_boots=1, nullcall_n=500, nullcall_rounds=3,
                   boot_runs=2, rootfs_boots=1, qemu_kvm_timeout=20.0, compute_native_reps=3, compute_boots=1,
                   compute_reps=2, os_native_samples=3, os_boots=1, os_samples=3, os_target_ms=60,
                   idle_s=4.0, opexits_scale=0.3, opexits_baselines=1,
                   blk_boots=1, blk_samples=2, net_boots=1, net_samples=2, net_mib=16, net_rounds=200)


@dataclass
class Bench:
    """Everything the suites need, and where they put what they find."""

    plan: Plan
    results: Results
    logs_dir: Path
    hospes: list[str]                 # argv prefix that runs the hospes CLI
    kernel: Path
    initramfs: Path
    bench_initramfs: Path
    programs: dict[str, Path]
    nullcall: Path
    qemu: str | None
    tsc_khz: int | None = None
    disk_image: Path | None = None
    disk_mib: int = 64
    rootfs_image: Path | None = None  # the rootfs suite's disk; None: `hospes image --rootfs`'s default
    log: Callable[[str], None] = print
    _log_seq: int = field(default=0)

    # --- helpers --------------------------------------------------------------

    def save_log(self, name: str, res: ProcResult) -> Path:
        with _LOG_LOCK:   # two guests of the network bench finish on two threads
            self._log_seq += 1
            seq = self._log_seq
        path = self.logs_dir / f"{seq:03d}-{name}.log"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"$ {shlex.join(res.argv)}\n# exit {res.returncode}, {res.wall_s:.2f} s"
            f"{', TIMED OUT' if res.timed_out else ''}, marks {res.marks}\n"
            f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}\n")
        return path

    def error(self, msg: str) -> None:
        self.log(f"  ! {msg}")
        self.results.errors.append(msg)

    def hospes_run(self, args: list[str], command: list[str] | None, name: str, workload: str | None,
                   timeout: float = 600, userspace: bool = True) -> ProcResult | None:
        """``hospes run --stats ARGS [-- COMMAND]``; records exit counts under ``workload``.

        With ``userspace`` the guest must print /init's userspace line within
        USERSPACE_LIMIT_S (a stuck boot is killed early).

        Returns None (after recording an error) when the run failed.
        """
        argv = [*self.hospes, "run", "--stats", *args]
        if command is not None:
            argv += ["--", *command]
        res = _run_guest(argv, timeout, USERSPACE_LIMIT_S) if userspace else run(argv, timeout)
        log = self.save_log(name, res)
        stats = parse.parse_exit_stats(res.stderr)
        ok = res.returncode == 0 and not res.timed_out
        if command is not None:
            ok = ok and f"{EXIT_STATUS}0" in res.stdout
        if not ok:
            self.error(f"{name}: hospes run failed (exit {res.returncode}"
                       f"{', timed out' if res.timed_out else ''}, guest {stats.reason}); log {log}")
            return None
        if workload is not None and stats.counts:
            self.results.add_exit_run(workload, stats.counts)
        return res

    def qemu_argv(self, accel: str, command: list[str], initrd: Path, quiet: bool = True) -> list[str]:
        from hospes.images import encode_command

        assert self.qemu is not None
        cpu = "max" if accel == "tcg" else "host"
        # noreplace-smp as in Hospes' default command line (toolstack/spec.py), so both
        # kernels skip the same uniprocessor rewrite of their lock prefixes.
        append = (f"console=ttyS0 {'quiet ' if quiet else ''}noreplace-smp {qemu_tsc_params(self.tsc_khz)}"
                  f"{encode_command(command)}")
        return [self.qemu, "-M", f"microvm,accel={accel}", "-cpu", cpu, "-m", str(GUEST_MIB),
                "-kernel", str(self.kernel), "-initrd", str(initrd), "-append", append,
                "-display", "none", "-nodefaults", "-serial", "stdio", "-no-reboot"]

    def qemu_run(self, command: list[str], name: str, initrd: Path, timeout: float = 900) -> ProcResult | None:
        res = _run_guest(self.qemu_argv("tcg", command, initrd), timeout, USERSPACE_LIMIT_S)
        log = self.save_log(name, res)
        if res.timed_out or f"{EXIT_STATUS}0" not in res.stdout:
            self.error(f"{name}: QEMU TCG run failed (exit {res.returncode}"
                       f"{', timed out' if res.timed_out else ''}); log {log}")
            return None
        return res

    def record_info(self, env: str, text: str) -> None:
        info = parse.parse_bench_info(text)
        if info:
            self.results.info.setdefault(env, {}).update(info)

    def add_values(self, suite: str, env: str, unit: str, text: str, names: set[str] | None = None) -> int:
        """Add every BENCH value of ``text`` as samples of (suite, name, env); returns how many."""
        vals = parse.bench_values(text)
        count = 0
        for name, samples in vals.items():
            if names is not None and name not in names:
                continue
            self.results.add(suite, name, env, unit, samples)
            count += len(samples)
        return count


def _run_guest(argv: list[str], timeout: float, userspace_limit: float) -> ProcResult:
    """Run a guest to completion, but give up early if it never reaches userspace."""
    proc = Proc(argv, markers=[USERSPACE])
    if proc.wait_mark(USERSPACE, userspace_limit) is None:
        proc.stop()
        res = proc.finish(30)
        res.timed_out = res.timed_out or res.returncode is None or res.returncode < 0
        return res
    return proc.finish(max(1.0, timeout - (time.monotonic() - proc.t0)))


def qemu_tsc_params(tsc_khz: int | None) -> str:
    """Kernel parameters that give a QEMU guest the TSC rate instead of calibrating it.

    Under TCG on a busy 2-core host, Linux's PIT calibration of the TSC fails
    ("Fast TSC calibration failed", "Unable to calibrate against PIT"), the TSC is
    marked unstable and microvm, having no HPET/PM timer, then hangs before any
    console output. TCG's TSC runs at the host's rate, so the host's rate is
    the truth; a Hospes guest gets it from pvclock the same way. tsc=reliable
    keeps the clocksource watchdog from dropping the TSC under load (the
    microbenchmarks would then time with jiffies).
    """
    if not tsc_khz:
        return ""
    return f"tsc_early_khz={tsc_khz} tsc=reliable "


def _guest_script(program: str) -> list[str]:
    """``sh -c`` command for a guest: report the clocksource, then run ``program``."""
    return ["sh", "-c", f"echo BENCHINFO clocksource=$(cat {CLOCKSOURCE}); {program}"]


# --- 1. exit floor and Hospes transitions ------------------------------------------

# The modes of bench/c/kvm_exit.c: the C floor of each KVM path Hospes uses.
FLOOR_MODES = tuple(mode for mode, _ in FLOORS)


def _floor_round(b: Bench, rnd: int) -> None:
    """One round of every C floor, back to back, so load changes hit all of them alike."""
    p = b.plan
    for mode in FLOOR_MODES:
        res = run([str(b.programs["kvm_exit"]), mode, str(p.floor_iters), "1"], 600)
        b.save_log(f"floor-{mode}-{rnd}", res)
        if res.returncode != 0 or b.add_values("transitions", ENV_FLOOR, "ns", res.stdout) == 0:
            b.error(f"kvm_exit {mode} failed (exit {res.returncode}): {res.stderr.strip()[-300:]}")


def _nullcall(b: Bench, i: int) -> None:
    p = b.plan
    res = b.hospes_run(["--kernel", str(b.nullcall), "--memory", "64",
                        "--cmdline", f"n={p.nullcall_n} rounds={p.nullcall_rounds}"],
                       None, f"nullcall-{i}", "nullcall", timeout=600, userspace=False)
    if res is None:
        return
    if "PASS nullcall" not in res.stdout or "FAIL" in res.stdout:
        b.error(f"nullcall guest did not pass: {[ln for ln in res.stdout.splitlines() if 'FAIL' in ln][:3]}")
        return
    b.add_values("transitions", ENV_HOSPES, "ns", res.stdout)


def suite_floor(b: Bench) -> None:
    """The C floors and the nullcall guest, interleaved: Hospes and its floors share the load of the moment."""
    p = b.plan
    boots = max(1, p.nullcall_boots)
    done = 0
    for i in range(boots):
        share = (p.floor_rounds * (i + 1)) // boots - done
        b.log(f"  C floors ({', '.join(FLOOR_MODES)}) x {p.floor_iters}, {share} round(s); "
              f"nullcall guest {i + 1}/{boots}")
        for _ in range(share):
            _floor_round(b, done)
            done += 1
        _nullcall(b, i)


# --- 2. boot --------------------------------------------------------------------

def _add_boot(b: Bench, env: str, who: str, res) -> bool:  # noqa: ANN001 - a runner result
    """Record one boot's userspace and poweroff times; False if it never reached userspace."""
    up = res.marks.get(USERSPACE)
    if up is None:
        b.error(f"boot: {who} printed no userspace line")
        return False
    b.results.add("boot", "userspace", env, "s", [up])
    b.results.add("boot", "poweroff", env, "s", [res.wall_s])
    return True


def _boot_hospes(b: Bench, i: int) -> None:
    res = b.hospes_run([], BOOT_COMMAND, f"boot-hospes-{i}", "boot", timeout=600)
    if res is None or not _add_boot(b, ENV_HOSPES, "Hospes", res):
        return
    stats = parse.parse_exit_stats(res.stderr)
    if stats.first_userspace_s is not None:
        b.results.add("boot", "userspace_inproc", ENV_HOSPES, "s", [stats.first_userspace_s],
                      "hospes' own figure: from domain build start, after Python start-up")
    if stats.wall_s is not None:
        b.results.add("boot", "poweroff_inproc", ENV_HOSPES, "s", [stats.wall_s])


def _boot_tcg(b: Bench, i: int) -> None:
    res = b.qemu_run(BOOT_COMMAND, f"boot-qemu-tcg-{i}", b.initramfs, timeout=600)
    if res is not None:
        _add_boot(b, ENV_TCG, "QEMU TCG", res)


QEMU_KVM_ERROR = "KVM internal error"


def _boot_qemu_kvm(b: Bench) -> None:
    """One attempt, as it fares: QEMU stops the VM (but keeps running) on a KVM internal error."""
    limit = b.plan.qemu_kvm_timeout
    b.log(f"  QEMU KVM (limit {limit:.0f} s)")
    # Without `quiet`, so that the last console line shows how far the kernel got.
    proc = Proc(b.qemu_argv("kvm", BOOT_COMMAND, b.initramfs, quiet=False), markers=[USERSPACE])
    first = proc.wait_any([QEMU_KVM_ERROR, EXIT_STATUS], limit)
    if first == QEMU_KVM_ERROR:
        time.sleep(1.0)                         # let the register dump arrive
        proc.stop()
    res = proc.finish(max(1.0, limit - (time.monotonic() - proc.t0)))
    b.save_log("boot-qemu-kvm", res)
    up = res.marks.get(USERSPACE)
    if up is not None and not res.timed_out and f"{EXIT_STATUS}0" in res.stdout:
        b.results.add("boot", "userspace", ENV_QKVM, "s", [up])
        b.results.add("boot", "poweroff", ENV_QKVM, "s", [res.wall_s])
        return
    last = parse.last_console_line(res.stdout)
    where = f"; last console line: `{last[:100]}`" if last else "; no console output"
    if first == QEMU_KVM_ERROR:
        reason = parse.qemu_failure_reason(res.stderr) or QEMU_KVM_ERROR
        insn = parse.qemu_faulting_instruction(res.stderr)
        status = (f"failed after {res.marks[QEMU_KVM_ERROR]:.0f} s: {reason}"
                  + (f" on `{insn}`" if insn else "") + where)
    elif res.timed_out:
        status = f"no poweroff within the {limit:.0f} s limit (killed)" + (
            f", userspace at {up:.1f} s" if up is not None else ", never reached userspace") + where
    else:
        reason = parse.qemu_failure_reason(res.stderr)
        status = f"failed after {res.wall_s:.0f} s: {reason or f'exit {res.returncode}'}" + where
    b.results.status[f"boot/{ENV_QKVM}"] = status
    b.log(f"    {status}")


def suite_boot(b: Bench) -> None:
    for i in range(b.plan.boot_runs):
        b.log(f"  boot {i + 1}/{b.plan.boot_runs}: Hospes" + (", QEMU TCG" if b.qemu else ""))
        _boot_hospes(b, i)
        if b.qemu:
            _boot_tcg(b, i)
    if b.qemu:
        _boot_qemu_kvm(b)
    else:
        b.results.status[f"boot/{ENV_TCG}"] = "not run: qemu-system-x86_64 is not installed"
        b.results.status[f"boot/{ENV_QKVM}"] = "not run: qemu-system-x86_64 is not installed"


# --- 2b. Debian root filesystem to its login prompt ------------------------------------

ROOTFS_LOGIN = " login: "        # getty's prompt ("debian login: "), no newline after it
ROOTFS_MIB = 1024
ROOTFS_VCPUS = 2
ROOTFS_LIMIT_S = 900.0           # a loaded 2-core host has taken 4 minutes under Hospes


def _rootfs_image(b: Bench) -> Path:
    if b.rootfs_image is not None:
        return b.rootfs_image
    from hospes.images.rootfs import RootfsOptions, ensure_rootfs

    return ensure_rootfs(RootfsOptions(), log=b.log).path     # built once (~3 min), then cached


def _sparse_copy(src: Path, dst: Path) -> None:
    res = run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], 600)
    if res.returncode != 0:
        raise RuntimeError(f"cannot copy {src} to {dst}: {res.stderr.strip()}")


def qemu_rootfs_cmdline(grub_cmdline: str, tsc_khz: int | None) -> str:
    """The image's own command line, for a virtio disk and a serial console."""
    words = [w for w in grub_cmdline.split() if not w.startswith(("BOOT_IMAGE=", "root=", "console="))]
    return " ".join(["root=/dev/vda", "console=ttyS0", *words]) + " " + qemu_tsc_params(tsc_khz).strip()


def _login_boot(b: Bench, argv: list[str], name: str, env: str, workload: str | None) -> None:
    """Boot to the first login prompt, record the time, then stop the guest."""
    proc = Proc(argv, markers=[ROOTFS_LOGIN])
    t = proc.wait_mark(ROOTFS_LOGIN, ROOTFS_LIMIT_S)
    proc.stop()
    res = proc.finish(30)
    log = b.save_log(name, res)
    stats = parse.parse_exit_stats(res.stderr)
    if workload is not None and stats.counts:
        b.results.add_exit_run(workload, stats.counts)
    if t is None:
        last = parse.last_console_line(res.stdout)
        why = (f"no login prompt within {ROOTFS_LIMIT_S:.0f} s" if res.returncode is None or res.returncode < 0
               else f"exited {res.returncode} before a login prompt") + (f"; last console line `{last[:100]}`"
                                                                        if last else "")
        b.error(f"{name}: {why}; log {log}")
        b.results.status.setdefault(f"rootfs/{env}", why)
        return
    b.results.add("rootfs", "login", env, "s", [t])


def suite_rootfs(b: Bench) -> None:
    """The Debian disk image to its login prompt: Hospes with pygrub vs QEMU TCG, one fresh copy per boot."""
    from hospes.bootloader.pygrub import choose

    image = _rootfs_image(b)
    b.results.meta["rootfs_image"] = str(image)
    work = b.logs_dir.parent / "rootfs"
    work.mkdir(parents=True, exist_ok=True)
    choice = choose(image)
    kernel, initrd = work / "vmlinuz", work / "initrd.img"
    kernel.write_bytes(choice.kernel)
    if choice.ramdisk is not None:
        initrd.write_bytes(choice.ramdisk)
    copy = work / "disk.img"
    try:
        for i in range(b.plan.rootfs_boots):
            b.log(f"  rootfs boot {i + 1}/{b.plan.rootfs_boots}: Hospes (pygrub)" + (", QEMU TCG" if b.qemu else ""))
            _sparse_copy(image, copy)
            _login_boot(b, [*b.hospes, "run", "--stats", "--disk", str(copy), "--bootloader", "pygrub",
                            "--memory", str(ROOTFS_MIB), "--vcpus", str(ROOTFS_VCPUS)],
                        f"rootfs-hospes-{i}", ENV_HOSPES, "rootfs")
            if not b.qemu:
                continue
            _sparse_copy(image, copy)
            argv = [b.qemu, "-M", "pc,accel=tcg", "-cpu", "max", "-m", str(ROOTFS_MIB), "-smp", str(ROOTFS_VCPUS),
                    "-kernel", str(kernel), "-append", qemu_rootfs_cmdline(choice.cmdline, b.tsc_khz),
                    "-drive", f"file={copy},format=raw,if=virtio", "-display", "none", "-nodefaults",
                    "-serial", "stdio", "-no-reboot"]
            if choice.ramdisk is not None:
                argv[argv.index("-append"):argv.index("-append")] = ["-initrd", str(initrd)]
            _login_boot(b, argv, f"rootfs-qemu-tcg-{i}", ENV_TCG, None)
    finally:
        for f in (copy, kernel, initrd):
            f.unlink(missing_ok=True)
    if not b.qemu:
        b.results.status[f"rootfs/{ENV_TCG}"] = "not run: qemu-system-x86_64 is not installed"


# --- 3. CPU-bound -----------------------------------------------------------------

def suite_cpu(b: Bench) -> None:
    """Native, Hospes and TCG runs interleaved, so a burst of other load hits all three alike."""
    p = b.plan
    native_reps = max(1, -(-p.compute_native_reps // p.compute_boots))
    script = _guest_script(f"/bench/compute {p.compute_reps}")
    for i in range(p.compute_boots):
        b.log(f"  compute round {i + 1}/{p.compute_boots}: native x {native_reps}, Hospes x {p.compute_reps}"
              + (f", QEMU TCG x {p.compute_reps}" if b.qemu else ""))
        res = run([str(b.programs["compute"]), str(native_reps)], 900)
        b.save_log(f"compute-native-{i}", res)
        if res.returncode != 0 or b.add_values("cpu", ENV_NATIVE, "s", res.stdout) == 0:
            b.error(f"compute native failed (exit {res.returncode})")
        res = b.hospes_run(["--ramdisk", str(b.bench_initramfs)], script, f"compute-hospes-{i}", "compute")
        if res is not None:
            b.add_values("cpu", ENV_HOSPES, "s", res.stdout)
            b.record_info(ENV_HOSPES, res.stdout)
        if b.qemu:
            res = b.qemu_run(script, f"compute-qemu-tcg-{i}", b.bench_initramfs)
            if res is not None:
                b.add_values("cpu", ENV_TCG, "s", res.stdout)
                b.record_info(ENV_TCG, res.stdout)


# --- 4. OS microbenchmarks ----------------------------------------------------------

def suite_os(b: Bench) -> None:
    """Native, Hospes and TCG runs interleaved, as for the CPU-bound suite."""
    p = b.plan
    native_samples = max(1, -(-p.os_native_samples // p.os_boots))
    script = _guest_script(f"/bench/osbench -s {p.os_samples} -t {p.os_target_ms}")
    for i in range(p.os_boots):
        b.log(f"  osbench round {i + 1}/{p.os_boots}: native, Hospes" + (", QEMU TCG" if b.qemu else ""))
        res = run([str(b.programs["osbench"]), "-s", str(native_samples), "-t", str(p.os_target_ms)], 900)
        b.save_log(f"osbench-native-{i}", res)
        if res.returncode != 0 or b.add_values("os", ENV_NATIVE, "ns", res.stdout) == 0:
            b.error(f"osbench native failed (exit {res.returncode}): {res.stderr.strip()[-300:]}")
        res = b.hospes_run(["--ramdisk", str(b.bench_initramfs)], script, f"osbench-hospes-{i}", "osbench",
                           timeout=900)
        if res is not None:
            b.add_values("os", ENV_HOSPES, "ns", res.stdout)
            b.record_info(ENV_HOSPES, res.stdout)
        if b.qemu:
            res = b.qemu_run(script, f"osbench-qemu-tcg-{i}", b.bench_initramfs)
            if res is not None:
                b.add_values("os", ENV_TCG, "ns", res.stdout)
                b.record_info(ENV_TCG, res.stdout)


# --- 5b. exits per guest operation ---------------------------------------------------

# Operations per run: enough that the op's exits dwarf the boot's run-to-run noise.
OPEXIT_OPS = {"null_syscall": 3000, "clock_gettime": 3000, "open_close": 1500, "fork_exit": 100, "fork_exec": 100,
              "page_fault": 2000, "pipe_pingpong": 1000}


def suite_opexits(b: Bench) -> None:
    """osbench with a fixed operation count per boot, minus a baseline boot: exits per operation."""
    p = b.plan
    tiny = ["/bench/osbench", "-n", "1", "-s", "1", "null_syscall"]
    base_runs = []
    for i in range(p.opexits_baselines):
        b.log(f"  baseline {i + 1}/{p.opexits_baselines}: {' '.join(tiny)}")
        res = b.hospes_run(["--ramdisk", str(b.bench_initramfs)], tiny, f"opexits-baseline-{i}", None)
        if res is not None:
            base_runs.append(parse.parse_exit_stats(res.stderr).counts)
    if not base_runs:
        b.error("opexits: no baseline run")
        return
    baseline = median_counts(base_runs)
    for test, ops in OPEXIT_OPS.items():
        n = max(10, int(ops * p.opexits_scale))
        b.log(f"  {test} x {n}")
        res = b.hospes_run(["--ramdisk", str(b.bench_initramfs)],
                           ["/bench/osbench", "-n", str(n), "-s", "1", test], f"opexits-{test}", None)
        if res is None:
            continue
        vals = parse.bench_values(res.stdout).get(f"os_{test}", [])
        b.results.op_exits[test] = {
            "ops": n,
            "ns_per_op": vals[0] if vals else None,
            "per_op": per_op_counts(parse.parse_exit_stats(res.stderr).counts, baseline, n),
        }


# --- 7. memory --------------------------------------------------------------------

def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _domain_process(pid: int) -> int:
    """``hospes run``'s own pid or, jailed, the descendant that runs the domain: the first
    process down the tree with the guest's memory mapped (``pid`` if none has)."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            if MEMFD_PREFIX in _read(f"/proc/{p}/maps"):
                return p
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in _read(f"/proc/{p}/task/{task}/children").split()]
        except OSError:
            continue
    return pid


def suite_memory(b: Bench) -> None:
    p = b.plan
    sleep_s = int(p.idle_s) + 3     # ends by itself soon after the sample
    argv = [*b.hospes, "run", "--stats", "--", "sh", "-c", f"echo {IDLE_MARK}; sleep {sleep_s}"]
    b.log(f"  hospes idle, sampled {p.idle_s:.0f} s after userspace")
    proc = Proc(argv, markers=[IDLE_MARK])
    snap: dict[str, object] = {}
    try:
        if proc.wait_mark(IDLE_MARK, 600) is None:
            raise RuntimeError("the guest never reached the idle command")
        time.sleep(p.idle_s)
        pid = _domain_process(proc.pid)
        status = parse.parse_status_kb(_read(f"/proc/{pid}/status"))
        maps = parse.parse_smaps(_read(f"/proc/{pid}/smaps"))
        memfd_rss, memfd_size = parse.mapping_rss_kb(maps, MEMFD_PREFIX)
        if memfd_size == 0:
            raise RuntimeError(f"no {MEMFD_PREFIX} mapping in /proc/{pid}/smaps or its children's")
        snap = {
            "idle_s": p.idle_s,
            "guest_ram_kb": GUEST_MIB * 1024,
            "memfd_size_kb": memfd_size,
            "memfd_rss_kb": memfd_rss,
            "vmrss_kb": status.get("VmRSS"),
            "vmhwm_kb": status.get("VmHWM"),
            "rss_anon_kb": status.get("RssAnon"),
            "rss_file_kb": status.get("RssFile"),
            "rss_shmem_kb": status.get("RssShmem"),
            "overhead_kb": (status.get("VmRSS") or 0) - memfd_rss,
        }
    except (OSError, RuntimeError) as e:
        b.error(f"memory: {e}")
        b.results.status["memory/hospes"] = f"not measured: {e}"
    finally:
        res = proc.finish(sleep_s + 120)
        b.save_log("memory-idle", res)
        stats = parse.parse_exit_stats(res.stderr)
        if stats.counts:
            b.results.add_exit_run("idle", stats.counts)
    if snap:
        base = run([sys.executable, "-c",
                    "import hospes.domain, hospes.cli, hospes.images; print(open('/proc/self/status').read())"], 120)
        snap["baseline_vmrss_kb"] = parse.parse_status_kb(base.stdout).get("VmRSS")
        b.results.memory = snap


# --- 6. devices ---------------------------------------------------------------------

def backend_modules() -> list[str]:
    """Device backends in hospes.devices besides the console."""
    try:
        pkg = importlib.import_module("hospes.devices")
        names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))
    except ImportError:
        return []
    return [n for n in names if n not in ("console", "__init__")]


def devices_sentence(backends: list[str], block_measured: bool, net_measured: bool = False,
                     net_reason: str = "") -> str:
    """What the devices section says about what is not measured ("" when both are)."""
    if not backends:
        return DEVICES_NONE
    parts = []
    if not block_measured:
        parts.append("block: not measured yet" + ("" if any("bl" in n for n in backends) else " (no block backend)"))
    if not net_measured:
        if not any("net" in n for n in backends):
            reason = "no net backend"
        else:
            reason = net_reason or "backend present, no benchmark"
        parts.append(f"network: not measured ({reason})")
    return "; ".join(parts)


def _hospes_has_disk_option(b: Bench) -> bool:
    res = run([*b.hospes, "run", "--help"], 120)
    return "--disk" in res.stdout


#: Queue depths of blkbench's random-read test in the guest (Linux AIO, O_DIRECT).
BLK_DEPTHS = "1,4,16"


def _block(b: Bench) -> bool:
    """blkbench on the disk image natively and on /dev/xvda in a guest (also at the
    queue depths BLK_DEPTHS); True if Hospes was measured."""
    p = b.plan
    measured = False
    disk = str(b.disk_image)
    args = ["-s", str(p.blk_samples), "-m", str(b.disk_mib)]
    for i in range(p.blk_boots):
        b.log(f"  block round {i + 1}/{p.blk_boots}: native (buffered, host page cache), "
              "Hospes (O_DIRECT on /dev/xvda)")
        res = run([str(b.programs["blkbench"]), "-w", *args, disk], 600)
        b.save_log(f"blk-native-{i}", res)
        if res.returncode != 0 or b.add_values("devices", ENV_NATIVE, "ns", res.stdout) == 0:
            b.error(f"blkbench native failed (exit {res.returncode}): {res.stderr.strip()[-300:]}")
        res = b.hospes_run(["--disk", disk, "--ramdisk", str(b.bench_initramfs)],
                           ["/bench/blkbench", "-d", "-w", "-q", BLK_DEPTHS, *args, "/dev/xvda"],
                           f"blk-hospes-{i}", "blk")
        if res is not None and b.add_values("devices", ENV_HOSPES, "ns", res.stdout):
            measured = True
    return measured


# Link-local addresses, one /24 per topology; every link sits in a private namespace.
NET_VETH = ("169.254.97.1", "169.254.97.2")     # native: client namespace, server namespace
NET_GH = ("169.254.96.1", "169.254.96.2")       # guest <-> host: host end (server), guest (client)
NET_GG = ("169.254.95.2", "169.254.95.3")       # guest <-> guest: server guest, client guest
NET_PORT = 5201
NET_SERVER_IDLE_S = 240       # a server whose client never comes gives up after this
NET_STREAMS = 4               # netbench -P: connections at once in the parallel stream figures


def _netbench_client(b: Bench, binary: str, server: str, prefix: str) -> list[str]:
    p = b.plan
    return [binary, "-c", server, "-p", str(NET_PORT), "-n", prefix, "-s", str(p.net_samples),
            "-m", str(p.net_mib), "-r", str(p.net_rounds), "-P", str(NET_STREAMS), "-q"]


def _netbench_server(binary: str) -> list[str]:
    return [binary, "-l", "-p", str(NET_PORT), "-t", str(NET_SERVER_IDLE_S)]


def _guest_net(addr: str, argv: list[str]) -> list[str]:
    """A guest command: address eth0, then run ``argv``."""
    return _guest_script(f"ip addr add {addr}/24 dev eth0 && ip link set eth0 up && {shlex.join(argv)}")


def _vif(mac_last: int, tap: str) -> list[str]:
    return ["--vif", f"mac=00:16:3e:00:62:{mac_last:02x},tap={tap}"]


def _tap_name(tag: str) -> str:
    return f"hb{os.getpid() % 100000}{tag}"[:15]


def _net_native(b: Bench, i: int) -> bool:
    """netbench between two namespaces over a veth pair: the host kernel on both ends."""
    binary = str(b.programs["netbench"])
    tag = f"{os.getpid() % 100000}{i}"
    with netns.Namespace(f"hbench-c{tag}") as cli, netns.Namespace(f"hbench-s{tag}") as srv:
        netns.veth_between(cli, f"{NET_VETH[0]}/24", srv, f"{NET_VETH[1]}/24", tag)
        server = Proc(srv.argv(_netbench_server(binary)))
        try:
            res = run(cli.argv(_netbench_client(b, binary, NET_VETH[1], "net")), 600)
        finally:
            server.stop()
            server.finish(5)
    b.save_log(f"net-native-{i}", res)
    if res.returncode != 0 or b.add_values("devices", ENV_NATIVE, "ns", res.stdout) == 0:
        b.error(f"netbench native failed (exit {res.returncode}): {res.stderr.strip()[-300:]}")
        return False
    return True


def _guests_with_plumbing(b: Bench, guests: list[tuple[list[str], list[str], str, str | None]],
                          plumb: Callable[[Callable[[], bool]], Proc | None]) -> list[ProcResult | None]:
    """Run ``guests`` (hospes_run arguments) concurrently while ``plumb`` wires their TAPs.

    ``plumb`` gets a liveness test (some guest is still running) and may return
    a host-side process to stop once the guests are done.
    """
    helper: Proc | None = None
    with ThreadPoolExecutor(len(guests)) as pool:
        futures = [pool.submit(b.hospes_run, args, cmd, name, workload) for args, cmd, name, workload in guests]
        try:
            helper = plumb(lambda: not all(f.done() for f in futures))
        except netns.NetnsError as e:
            # the guests' clients give up after netbench's connect wait, their servers after NET_SERVER_IDLE_S
            b.error(f"network plumbing failed: {e}")
        results = [f.result() for f in futures]
    if helper is not None:
        helper.stop()
        res = helper.finish(5)
        if res.returncode not in (0, None) and not res.timed_out:
            b.error(f"host netbench server exited {res.returncode}: {res.stderr.strip()[-300:]}")
    return results


def _net_guest_host(b: Bench, i: int) -> bool:
    """netbench in a guest (client) against the host end of its TAP (server)."""
    tap = _tap_name(f"h{i}")
    binary = str(b.programs["netbench"])
    with netns.Namespace(f"hbench-gh{os.getpid() % 100000}{i}") as ns:
        def plumb(alive: Callable[[], bool]) -> Proc:
            netns.wait_for_link(tap, alive, USERSPACE_LIMIT_S)
            ns.adopt(tap, f"{NET_GH[0]}/24")
            return Proc(ns.argv(_netbench_server(binary)))

        guest = ([*_vif(1, tap), "--ramdisk", str(b.bench_initramfs)],
                 _guest_net(NET_GH[1], _netbench_client(b, "/bench/netbench", NET_GH[0], "net_gh")),
                 f"net-guest-host-{i}", "net")
        (res,) = _guests_with_plumbing(b, [guest], plumb)
    return res is not None and b.add_values("devices", ENV_HOSPES, "ns", res.stdout) > 0


def _net_guest_guest(b: Bench, i: int) -> bool:
    """netbench between two guests whose TAPs share a bridge in a private namespace."""
    taps = (_tap_name(f"s{i}"), _tap_name(f"c{i}"))
    with netns.Namespace(f"hbench-gg{os.getpid() % 100000}{i}") as ns:
        def plumb(alive: Callable[[], bool]) -> None:
            ns.bridge("br0")
            for tap in taps:
                netns.wait_for_link(tap, alive, USERSPACE_LIMIT_S)
                ns.adopt(tap, master="br0")

        ramdisk = ["--ramdisk", str(b.bench_initramfs)]
        server = ([*_vif(2, taps[0]), *ramdisk], _guest_net(NET_GG[0], _netbench_server("/bench/netbench")),
                  f"net-gg-server-{i}", None)
        client = ([*_vif(3, taps[1]), *ramdisk],
                  _guest_net(NET_GG[1], _netbench_client(b, "/bench/netbench", NET_GG[0], "net_gg")),
                  f"net-gg-client-{i}", "net-gg")
        _, res = _guests_with_plumbing(b, [server, client], plumb)
    return res is not None and b.add_values("devices", ENV_HOSPES, "ns", res.stdout) > 0


def _network(b: Bench) -> tuple[bool, str]:
    """TCP through the PV network device; (measured, why not)."""
    reason = netns.unavailable_reason()
    if reason is not None:
        return False, reason
    p = b.plan
    measured = False
    for i in range(p.net_boots):
        b.log(f"  network round {i + 1}/{p.net_boots}: native (veth between namespaces), "
              "guest <-> host (TAP), guest <-> guest (two TAPs on a bridge)")
        _net_native(b, i)
        measured = _net_guest_host(b, i) or measured
        measured = _net_guest_guest(b, i) or measured
    return measured, "" if measured else "every network run failed; see the problems below"


def suite_devices(b: Bench) -> None:
    """The PV block and network devices vs the same work natively."""
    backends = backend_modules()
    block = (b.disk_image is not None and any("bl" in n for n in backends) and _hospes_has_disk_option(b)
             and _block(b))
    net, why = _network(b) if any("net" in n for n in backends) else (False, "")
    b.results.devices = devices_sentence(backends, block, net, why)


SUITES: dict[str, Callable[[Bench], None]] = {
    "floor": suite_floor,
    "boot": suite_boot,
    "rootfs": suite_rootfs,
    "cpu": suite_cpu,
    "os": suite_os,
    "opexits": suite_opexits,
    "memory": suite_memory,
    "devices": suite_devices,
}

# What `bench/run.py` runs without --suites: rootfs needs the big disk image (and minutes per boot).
DEFAULT_SUITES = [name for name in SUITES if name != "rootfs"]
