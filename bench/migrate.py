#!/usr/bin/env python3
"""Measure save, restore and live migration between two hospesd on this machine.

    .venv/bin/python bench/migrate.py            # ~4 min: results in bench/results/migrate/
    .venv/bin/python bench/migrate.py --quick    # fewer repetitions

Two daemons with their own run directories stand for the source and
destination hosts; the stream goes over a Unix socket. Guests are the default
image plus the bench programs (bench/c/stamp.c, bench/c/dirty.c):

* idle: a 256 MiB guest whose only activity is ``stamp``, which reads the
  guest's clock in a loop and keeps the longest gap it sees (the downtime as
  the guest sees it);
* busy: the same guest also running ``dirty 64`` (rewrites 64 MiB for ever);
  it settles for a while first, so its buffer is all touched before the rounds;
* save and restore of 256 MiB and 1 GiB guests.

For each migration: the host-side downtime (pause at the source to the
destination's confirmation that the guest runs), the guest-side one, the total
time, the rounds and the pages of each round. Writes results.json, a markdown
table (table.md) and, with matplotlib, a plot of the pages sent per round
(rounds.png). Needs root and /dev/kvm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))

from hospesbench import build  # noqa: E402

from hospes.images import ensure_default_images  # noqa: E402
from hospes.toolstack.client import Domain, Hospes, connect  # noqa: E402
from hospes.toolstack.spec import DEFAULT_IMAGE_CMDLINE  # noqa: E402


def guest_config(name: str, memory: int, ramdisk: Path) -> Path:
    path = ramdisk.parent / f"{name}.cfg"
    path.write_text(f'name = "{name}"\nmemory = {memory}\nvcpus = 1\nkernel = "@default"\n'
                    f'ramdisk = "{ramdisk}"\ncmdline = "{DEFAULT_IMAGE_CMDLINE}"\n')
    return path


def start(hospes: Hospes, name: str, memory: int, ramdisk: Path, busy_mib: int = 0) -> Domain:
    dom = hospes.create(guest_config(name, memory, ramdisk))
    dom.run("true", timeout=120)
    dom.run("/bench/stamp /tmp/stamp >/dev/null 2>&1 &")
    if busy_mib:
        dom.run(f"/bench/dirty {busy_mib} >/dev/null 2>&1 &")
    time.sleep(2 + busy_mib / 8)   # let the programs settle (the busy one touches its buffer: slow first faults)
    return dom


def guest_gap_ms(dom: Domain) -> float:
    """The longest gap the guest's clock loop saw since it (re)started, in ms."""
    out = dom.run("cat /tmp/stamp").output.split()
    return int(out[0]) / 1000.0


def restart_stamp(dom: Domain) -> None:
    dom.run("killall stamp; rm -f /tmp/stamp; /bench/stamp /tmp/stamp >/dev/null 2>&1 &")
    time.sleep(1)


def migrate(src: Hospes, dst: Hospes, dom: Domain, sock: Path) -> tuple[Domain, dict[str, Any]]:
    # The same program over the same time without a migration: the gaps the guest's own
    # scheduling makes (a busy guest's other process holds its one vCPU now and then).
    restart_stamp(dom)
    time.sleep(1.5)
    baseline = guest_gap_ms(dom)
    restart_stamp(dom)
    incoming = dst.incoming(f"unix:{sock}")
    result = dom.migrate(f"unix:{sock}")
    moved = incoming.wait_incoming(120)
    time.sleep(0.5)
    result["guest_gap_ms"] = guest_gap_ms(moved)
    result["guest_gap_baseline_ms"] = baseline
    return moved, result


def scenario(name: str, hosts: tuple[Hospes, Hospes], ramdisk: Path, runs: int, sock_dir: Path,
             busy_mib: int = 0) -> list[dict[str, Any]]:
    src, dst = hosts
    dom = start(src, f"mig-{name}", 256, ramdisk, busy_mib)
    results = []
    for i in range(runs):
        sock = sock_dir / f"{name}{i}.sock"
        dom, result = migrate(src, dst, dom, sock)
        results.append(result)
        print(f"{name} run {i + 1}: downtime {result['downtime_ms']} ms (guest {result['guest_gap_ms']:.1f} ms, "
              f"{result['guest_gap_baseline_ms']:.1f} ms without a migration), "
              f"total {result['total_s']} s, {result['rounds']} rounds, "
              f"{[r['pages'] for r in result['per_round']]} pages", flush=True)
        src, dst = dst, src
    dom.destroy()
    return results


def save_restore(hospes: Hospes, ramdisk: Path, memory: int, runs: int, tmp: Path) -> list[dict[str, float]]:
    out = []
    for i in range(runs):
        dom = start(hospes, f"sr{memory}-{i}", memory, ramdisk)
        path = tmp / f"sr{memory}.hsv"
        t0 = time.monotonic()
        reply = dom.save(path)
        saved = time.monotonic() - t0
        t0 = time.monotonic()
        back = hospes.restore(path)
        restored = time.monotonic() - t0
        back.run("true", timeout=60)
        back.destroy()
        out.append({"memory_mib": memory, "save_s": round(saved, 3), "restore_s": round(restored, 3),
                    "file_mib": round(reply["bytes"] / 2**20, 1)})
        print(f"save/restore {memory} MiB: save {saved:.2f} s, restore {restored:.2f} s, "
              f"file {reply['bytes'] / 2**20:.1f} MiB", flush=True)
        path.unlink()
    return out


def med(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def table(results: dict[str, Any]) -> str:
    lines = ["| guest | downtime, host (ms) | longest gap in the guest (ms) | the same without a migration (ms) "
             "| total (s) | rounds | pages sent |",
             "|---|---|---|---|---|---|---|"]
    for name, label in (("idle", "idle, 256 MiB"), ("busy", "rewriting 64 MiB, 256 MiB")):
        runs = results[name]
        lines.append(
            f"| {label} | {med([r['downtime_ms'] for r in runs])} (max {max(r['downtime_ms'] for r in runs)}) "
            f"| {med([r['guest_gap_ms'] for r in runs])} | {med([r['guest_gap_baseline_ms'] for r in runs])} "
            f"| {med([r['total_s'] for r in runs])} "
            f"| {med([r['rounds'] for r in runs])} | {int(med([r['pages_sent'] for r in runs]))} |")
    lines += ["", "| guest memory | save (s) | restore (s) | file (MiB) |", "|---|---|---|---|"]
    for memory in sorted({r["memory_mib"] for r in results["save_restore"]}):
        runs = [r for r in results["save_restore"] if r["memory_mib"] == memory]
        lines.append(f"| {memory} MiB | {med([r['save_s'] for r in runs])} | {med([r['restore_s'] for r in runs])} "
                     f"| {runs[0]['file_mib']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, style, color in (("idle", "o-", "tab:blue"), ("busy", "s-", "tab:red")):
        for i, run in enumerate(results[name]):
            pages = [r["pages"] for r in run["per_round"]]
            ax.plot(range(1, len(pages) + 1), pages, style, color=color, alpha=0.6,
                    label=("idle" if name == "idle" else "rewriting 64 MiB") if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("round (the last one with the guest paused)")
    ax.set_ylabel("pages sent")
    ax.set_title("Live migration of a 256 MiB guest: pages per round")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return True


def stop_everything_under(work: Path) -> None:
    """Kill the daemons and domain processes whose command line names ``work`` (a failed
    run leaves guests spinning otherwise), by pid."""
    needle = str(work).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "migrate")
    args = parser.parse_args(argv)
    runs = 2 if args.quick else 5
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hospes-migbench-"))
    ok = False
    try:
        programs = build.build_host_programs(work / "bin")
        ramdisk = build.build_initramfs(ensure_default_images().initramfs, programs, work / "initramfs-bench.img")
        hosts = (connect(work / "a"), connect(work / "b"))
        results: dict[str, Any] = {
            "idle": scenario("idle", hosts, ramdisk, runs, work),
            "busy": scenario("busy", hosts, ramdisk, runs, work, busy_mib=64),
            "save_restore": (save_restore(hosts[0], ramdisk, 256, 2 if args.quick else 3, work)
                             + save_restore(hosts[0], ramdisk, 1024, 1 if args.quick else 2, work)),
        }
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        text = table(results)
        (args.out / "table.md").write_text(text)
        print(text)
        if plot(results, args.out / "rounds.png"):
            print(f"plot: {args.out / 'rounds.png'}")
        ok = True
    finally:
        stop_everything_under(work)
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"the run directories and logs stay in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
