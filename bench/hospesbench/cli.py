"""``bench/run.py``: set up, build, measure, and write the table, JSON and plots."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hospesbench import build
from hospesbench.machine import cpu_busy, hospes_commit, load_average, machine_info, source_digest, tsc_khz
from hospesbench.model import Results
from hospesbench.report import render_markdown, update_docs
from hospesbench.suites import DEFAULT_SUITES, SUITES, Bench, Plan

ROOT = build.ROOT
DEFAULT_OUT = build.BENCH_DIR / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
QEMU = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"
MATPLOTLIB_PIN = "matplotlib==3.11.2"      # same pin as the `bench` extra in pyproject.toml


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Reproduce every Hospes benchmark figure: results table (markdown + JSON) and plots.")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, for development (~4 min)")
    p.add_argument("--update-docs", action="store_true",
                   help="rewrite the results section of docs/benchmarks.md with this run's table")
    p.add_argument("--suites", default=",".join(DEFAULT_SUITES),
                   help=f"comma-separated subset of: {', '.join(SUITES)} (default: all but rootfs, which "
                   "boots the `hospes image --rootfs` disk, building it first if it is not cached)")
    p.add_argument("--rootfs-image", type=Path, metavar="DISK_IMG",
                   help="the rootfs suite's disk image (default: `hospes image --rootfs`'s, built if missing); "
                   "it is copied for each boot, never changed")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default bench/results)")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install QEMU or pip install matplotlib when missing")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: re-render the table, plots (and docs) from a results.json")
    return p


def _ensure_qemu(install: bool) -> str | None:
    path = shutil.which(QEMU)
    if path or not install:
        return path
    if os.geteuid() != 0:
        _log(f"  {QEMU} is missing and we are not root: QEMU figures are skipped")
        return None
    _log(f"  installing {QEMU_PACKAGE} with apt-get (QEMU is the comparison)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", QEMU_PACKAGE], env=env,
                   check=False, stdout=subprocess.DEVNULL)
    return shutil.which(QEMU)


def _have_matplotlib(install: bool) -> bool:
    try:
        import matplotlib  # noqa: F401

        return True
    except ImportError:
        pass
    if not install:
        return False
    _log(f"  installing {MATPLOTLIB_PIN} into {sys.prefix} (the plots need it)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", MATPLOTLIB_PIN],
                   check=False)
    try:
        import matplotlib  # noqa: F401,F811

        return True
    except ImportError:
        return False


def _hospes_argv() -> list[str]:
    script = Path(sys.executable).parent / "hospes"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hospes"]


def _command_line(argv: list[str]) -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)
    except ValueError:
        exe_s = str(exe)
    return shlex.join([exe_s, "bench/run.py", *argv])


def write_outputs(res: Results, run_dir: Path, out_root: Path, plots: bool, docs: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(res.to_json())
    (run_dir / "results.md").write_text(render_markdown(res, heading_level=1))
    _log(f"wrote {run_dir / 'results.md'} and results.json")
    if plots:
        from hospesbench.plots import write_plots

        for p in write_plots(res, run_dir / "plots"):
            _log(f"wrote {p}")
    else:
        _log("no plots: matplotlib is not installed (pip install -e '.[bench]')")
    latest = out_root / "latest"
    if run_dir.parent == out_root:
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(run_dir.name)
        except OSError:
            pass
    if docs:
        text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
        DOCS.write_text(update_docs(text, render_markdown(res, heading_level=2)))
        _log(f"updated {DOCS}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    install = not args.no_install
    out_root: Path = args.out.resolve()

    if args.render:
        res = Results.from_json(args.render.read_text())
        write_outputs(res, args.render.resolve().parent, out_root, _have_matplotlib(install), args.update_docs)
        return 0

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        _log(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
        return 2
    try:
        import hospes  # noqa: F401
    except ImportError:
        _log("hospes is not importable: run this with the project's venv, .venv/bin/python bench/run.py")
        return 2
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        _log("/dev/kvm is not usable here (the bench needs KVM and root)")
        return 2

    t_start = time.monotonic()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = out_root / stamp
    plan = Plan.quick() if args.quick else Plan()
    _log(f"hospes bench{' (quick)' if args.quick else ''}: results in {run_dir}")

    _log("setup")
    qemu = _ensure_qemu(install)
    plots = _have_matplotlib(install)
    from hospes.images import ensure_default_images

    images = ensure_default_images(log=_log)
    build_dir = out_root / "build"
    programs = build.build_host_programs(build_dir)
    nullcall = build.build_nullcall(build_dir)
    bench_initramfs = build.build_initramfs(images.initramfs, programs, build_dir / "initramfs-bench.cpio")
    disk_image = build.build_disk_image(build_dir / "disk.img")

    res = Results()
    res.meta = {
        "command": _command_line(argv),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "suites": suites,
        "machine": machine_info(qemu),
        "hospes_commit": hospes_commit(),
        "hospes_sources": source_digest(),
        "kernel_image": str(images.kernel),
        "initramfs": str(images.initramfs),
        "plan": dataclasses.asdict(plan),
    }
    bench = Bench(plan=plan, results=res, logs_dir=run_dir / "logs", hospes=_hospes_argv(), kernel=images.kernel,
                  initramfs=images.initramfs, bench_initramfs=bench_initramfs, programs=programs,
                  nullcall=nullcall, qemu=qemu, tsc_khz=tsc_khz(), disk_image=disk_image,
                  disk_mib=build.DISK_MIB, rootfs_image=args.rootfs_image, log=_log)
    if qemu is None:
        res.errors.append(f"{QEMU} is not installed: QEMU columns are empty")

    timings = {}
    for name in suites:
        t0 = time.monotonic()
        busy = cpu_busy()
        busy_s = "?" if busy is None else f"{busy * 100:.0f}%"
        _log(f"suite {name} (before it, other processes kept the CPUs {busy_s} busy; "
             f"load average {load_average()})")
        res.meta.setdefault("busy_before_suite", {})[name] = busy_s
        res.meta.setdefault("sources_before_suite", {})[name] = source_digest()
        try:
            SUITES[name](bench)
        except Exception as e:  # a broken suite must not lose the others' figures
            bench.error(f"suite {name} crashed: {type(e).__name__}: {e}")
        timings[name] = round(time.monotonic() - t0, 1)
        _log(f"  ({timings[name]:.0f} s)")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(res.to_json())   # partial results survive a crash
    res.meta["suite_seconds"] = timings
    end_commit, end_sources = hospes_commit(), source_digest()
    if (end_commit, end_sources) != (res.meta["hospes_commit"], res.meta["hospes_sources"]):
        res.meta["hospes_commit_end"], res.meta["hospes_sources_end"] = end_commit, end_sources
        before = res.meta["sources_before_suite"]
        changed = [n for n in suites if before.get(n) != res.meta["hospes_sources"]]
        where = (f"; suites from `{changed[0]}` on ran on changed sources" if changed else
                 "; the change came during the last suite or after it")
        res.errors.append(f"Hospes' sources changed while the bench ran (commit {res.meta['hospes_commit']} -> "
                          f"{end_commit}, sources {res.meta['hospes_sources']} -> {end_sources}){where}")
    res.meta["duration_s"] = round(time.monotonic() - t_start, 1)
    write_outputs(res, run_dir, out_root, plots, args.update_docs)
    print(render_markdown(res, heading_level=1))
    return 1 if res.errors else 0
