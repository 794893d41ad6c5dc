"""Results -> the markdown table (results.md, docs/benchmarks.md) and JSON.

Every timed cell reads ``min / median [range]``: the best sample, the median
sample, and ``(max - min) / median`` so the noise of this machine stays visible.
"""

from __future__ import annotations

import math
import re

from hospesbench.parse import is_exit
from hospesbench.model import ENV_FLOOR, ENV_HOSPES, ENV_NATIVE, ENV_QKVM, ENV_TCG, Results
from hospesbench.stats import Summary, ratio

DOCS_BEGIN = "<!-- bench-results:begin (written by `bench/run.py --update-docs`) -->"
DOCS_END = "<!-- bench-results:end -->"
_DOCS_BLOCK = re.compile(r"<!-- bench-results:begin[^\n]*-->.*?<!-- bench-results:end -->", re.S)

# (name, env, label) of the transition rows, in order.
TRANSITIONS: list[tuple[str, str, str]] = [
    ("floor_out", ENV_FLOOR, "C floor: `out` at CPL 3 -> KVM_EXIT_IO -> KVM_RUN"),
    ("floor_syscall", ENV_FLOOR, "C floor: `syscall` -> LSTAR stub `out`, RIP/RFLAGS put back through sync regs"),
    ("hypercall_null", ENV_HOSPES, "Hospes null hypercall `xen_version(0)`"),
    ("trap_cpuid", ENV_HOSPES, "Hospes trap: forced-emulation CPUID (#UD, emulated)"),
    ("trap_bounce", ENV_HOSPES, "Hospes trap bounced to the guest: `int3` -> handler -> HYPERVISOR_iret"),
    ("mmu_update_pte", ENV_HOSPES, "Hospes `mmu_update` of one PTE"),
    ("update_va_invlpg", ENV_HOSPES, "Hospes `update_va_mapping` + UVMF_INVLPG"),
]

COMPUTE: list[tuple[str, str]] = [
    ("compute_int", "int: xorshift64* chain, 1e8 steps"),
    ("compute_fp", "fp: dependent divides + FMAs, 1e8 steps"),
    ("compute_mem", "mem: 2e6 dependent random reads in 32 MiB"),
]

OS: list[tuple[str, str]] = [
    ("os_null_syscall", "null syscall (getppid)"),
    ("os_clock_gettime", "clock_gettime(CLOCK_MONOTONIC)"),
    ("os_open_close", "open + close"),
    ("os_fork_exit", "fork + exit + wait"),
    ("os_fork_exec", "fork + exec (static tiny) + wait"),
    ("os_page_fault", "page fault (first touch of an anonymous page)"),
    ("os_pipe_pingpong", "pipe ping-pong round trip (2 switches)"),
]

BOOT_ENVS: list[tuple[str, str]] = [
    (ENV_HOSPES, "Hospes (`hospes run`)"),
    (ENV_TCG, "QEMU TCG (`-M microvm,accel=tcg -cpu max`)"),
    (ENV_QKVM, "QEMU KVM (`-M microvm,accel=kvm -cpu host`)"),
]

# Workloads whose exit counts are shown, in order, with their column titles.
WORKLOADS: list[tuple[str, str]] = [
    ("boot", "boot (`uname -a`)"),
    ("nullcall", "nullcall guest"),
    ("compute", "compute"),
    ("osbench", "osbench"),
    ("blk", "blkbench"),
    ("net", "netbench guest <-> host"),
    ("net-gg", "netbench guest <-> guest (client)"),
    ("idle", "boot + idle"),
]
BOOT_INCLUDED = ("compute", "osbench", "blk", "net", "idle")   # these runs contain a whole boot too
EXIT_ROWS = 16

DEVICES_NONE = "not measured yet (no block/net backend)"


# --- number formatting ---------------------------------------------------------

def fmt_num(x: float) -> str:
    """A figure with about three significant digits, no exponent for everyday sizes."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a == 0:
        return "0"
    return f"{x:#.3g}"


def fmt_cell(s: Summary | None, scale: float = 1.0) -> str:
    """``min / median [range%]`` of ``s`` times ``scale``; "-" if there is no figure."""
    if s is None:
        return "-"
    t = s.scaled(scale)
    if t.n == 1:
        return f"{fmt_num(t.median)} (n=1)"
    return f"{fmt_num(t.min)} / {fmt_num(t.median)} [{t.spread * 100:.0f}%]"


def fmt_ratio(a: Summary | None, b: Summary | None) -> str:
    if a is None or b is None:
        return "-"
    r = ratio(a, b)
    return f"{fmt_num(r)}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


# --- sections ------------------------------------------------------------------

def _section_transitions(res: Results) -> list[str]:
    floor_out = res.summary("transitions", "floor_out", ENV_FLOOR)
    floor_sys = res.summary("transitions", "floor_syscall", ENV_FLOOR)
    rows = []
    for name, env, label in TRANSITIONS:
        s = res.summary("transitions", name, env)
        if s is None and (f"transitions/{env}" not in res.status):
            continue
        if s is None:
            rows.append([label, res.status[f"transitions/{env}"], "", "", "", ""])
            continue
        is_floor = env == ENV_FLOOR
        rows.append([label, fmt_cell(s, 1e-3), str(s.n),
                     "" if name == "floor_out" else fmt_ratio(s, floor_out),
                     "" if is_floor else fmt_ratio(s, floor_sys)])
    lines = ["### 1. Exit floor and Hospes transitions (us per round trip)", ""]
    if not rows:
        return lines + ["not measured in this run", ""]
    lines += _table(["path", "min / median [range] us", "n", "x `out` floor", "x `syscall` floor"], rows)
    lines += ["",
              "The C floor is `bench/c/kvm_exit.c`: a 64-bit guest at CPL 3 (long mode, so it runs "
              "natively on this KVM) and a C loop around KVM_RUN. The Hospes rows are timed inside "
              "the PV guest `bench/guests/nullcall.c` with rdtsc scaled by the pvclock "
              "(tsc_to_system_mul/shift); each sample is the mean of a batch.", ""]
    return lines


def _section_boot(res: Results) -> list[str]:
    rows = []
    for env, label in BOOT_ENVS:
        up = res.summary("boot", "userspace", env)
        off = res.summary("boot", "poweroff", env)
        status = res.status.get(f"boot/{env}")
        if up is None and off is None and status is None:
            continue
        if status and up is None:
            rows.append([label, status, "", ""])
            continue
        n = max(x.n for x in (up, off) if x is not None)
        rows.append([label, fmt_cell(up), fmt_cell(off), str(n)])
    lines = ["### 2. Boot to userspace and to poweroff (s, wall, from process start)", ""]
    if not rows:
        return lines + ["not measured in this run", ""]
    lines += _table(["guest", "first userspace line", "poweroff (process exit)", "n"], rows)
    lines += ["",
              "Same kernel (Debian's cloud kernel), same initramfs, same command (`uname -a`), "
              "256 MiB. The userspace line is /init's `hospes: userspace up`. QEMU gets "
              "`tsc_early_khz=<host TSC> tsc=reliable` (without them TCG under load hangs in TSC "
              "calibration); the KVM attempt runs without `quiet` to show how far it got."]
    inproc = res.summary("boot", "userspace_inproc", ENV_HOSPES)
    up = res.summary("boot", "userspace", ENV_HOSPES)
    if inproc is not None and up is not None:
        lines += [f"Hospes' own `--stats` figure, from the start of the domain build: "
                  f"{fmt_cell(inproc)} s to userspace, so Python start-up and imports take "
                  f"~{fmt_num(up.median - inproc.median)} s of the total."]
    return lines + [""]


def _section_compute(res: Results) -> list[str]:
    rows = []
    for name, label in COMPUTE:
        nat = res.summary("cpu", name, ENV_NATIVE)
        hos = res.summary("cpu", name, ENV_HOSPES)
        tcg = res.summary("cpu", name, ENV_TCG)
        if nat is None and hos is None and tcg is None:
            continue
        rows.append([label, fmt_cell(nat), fmt_cell(hos), fmt_cell(tcg), fmt_ratio(hos, nat), fmt_ratio(tcg, nat)])
    lines = ["### 3. CPU-bound, fixed work (s, timed by the program itself)", ""]
    if not rows:
        return lines + ["not measured in this run", ""]
    lines += _table(["kernel (`bench/c/compute.c`)", "native", "Hospes", "QEMU TCG", "Hospes / native",
                     "TCG / native"], rows)
    lines += [""]
    return lines


def _section_os(res: Results) -> list[str]:
    rows = []
    for name, label in OS:
        nat = res.summary("os", name, ENV_NATIVE)
        hos = res.summary("os", name, ENV_HOSPES)
        tcg = res.summary("os", name, ENV_TCG)
        if nat is None and hos is None and tcg is None:
            continue
        rows.append([label, fmt_cell(nat, 1e-3), fmt_cell(hos, 1e-3), fmt_cell(tcg, 1e-3),
                     fmt_ratio(hos, nat), fmt_ratio(hos, tcg)])
    lines = ["### 4. OS microbenchmarks (us per operation, `bench/c/osbench.c`)", ""]
    if not rows:
        return lines + ["not measured in this run", ""]
    lines += _table(["operation", "native", "Hospes", "QEMU TCG", "Hospes / native", "Hospes / TCG"], rows)
    clocks = {env: res.info.get(env, {}).get("clocksource") for env in (ENV_HOSPES, ENV_TCG)}
    seen = ", ".join(f"{env}: {c}" for env, c in clocks.items() if c)
    lines += ["", "Each sample is one calibrated batch timed with clock_gettime(CLOCK_MONOTONIC) in "
              "the environment itself" + (f" (guest clocksource {seen})" if seen else "") + ".", ""]
    return lines


EXITS_LEGEND = (
    "Exits (KVM_RUN returned to Hospes): `hypercall:N` is Xen hypercall N (1 mmu_update, 3 stack_switch, "
    "14 update_va_mapping, 17 xen_version, 23 iret, 24 vcpu_op, 25 set_segment_base, 26 mmuext_op, "
    "29 sched_op, 32 event_channel_op), `syscall` a guest user-mode system call, `trap:V` an exception "
    "(emulated or bounced to the guest), `kick` a KVM_RUN interrupted to deliver an event. Not exits, but "
    "how Hospes resumed the guest or what it did on the way: `writer` (the in-VM page-table writer ran "
    "first: PTE stores, TLB flush, CR3 switch; its instructions run at CPL 0, which this KVM emulates), "
    "`sregs_switch` (a guest mode switch through sync regs), `upcall` (an event delivered), `ptwr` "
    "(a `trap:14` emulated as a page-table write).")


def _section_exits(res: Results) -> list[str]:
    med = res.exit_medians()
    lines = ["### 5. Exits to Hospes by kind, and resume paths (`hospes run --stats`, median over runs)", ""]
    present = [(w, title) for w, title in WORKLOADS if w in med]
    present += [(w, w) for w in med if w not in dict(WORKLOADS)]
    if not present:
        return lines + ["not measured in this run", ""]
    boot = med.get("boot")
    columns: list[tuple[str, str, bool]] = []   # (workload, title, minus boot)
    for w, title in present:
        columns.append((w, title, False))
        if boot is not None and w in BOOT_INCLUDED:
            columns.append((w, f"{title} minus boot", True))
    totals: dict[str, int] = {}
    for w, _ in present:
        for k, n in med[w].items():
            totals[k] = totals.get(k, 0) + n
    order = sorted(totals, key=lambda k: (-totals[k], k))
    exit_kinds = [k for k in order if is_exit(k)]
    other_kinds = [k for k in order if not is_exit(k)]
    shown, rest = exit_kinds[:EXIT_ROWS], exit_kinds[EXIT_ROWS:]

    def cell(w: str, minus: bool, keys: list[str]) -> str:
        n = sum(med[w].get(k, 0) for k in keys)
        if minus:
            assert boot is not None
            d = n - sum(boot.get(k, 0) for k in keys)
            return f"{d:+,}"
        return f"{n:,}"

    rows = [[f"`{k}`"] + [cell(w, minus, [k]) for w, _, minus in columns] for k in shown]
    if rest:
        rows.append([f"other exits ({len(rest)} kinds)"] + [cell(w, minus, rest) for w, _, minus in columns])
    rows.append(["**exits**"] + [f"**{cell(w, minus, exit_kinds)}**" for w, _, minus in columns])
    rows += [[f"`{k}` (not an exit)"] + [cell(w, minus, [k]) for w, _, minus in columns] for k in other_kinds]
    runs = ", ".join(f"{title}: {len(res.exit_runs[w])}" for w, title in present)
    lines += _table(["kind"] + [title for _, title, _ in columns], rows)
    lines += ["", f"Runs per workload: {runs}. {EXITS_LEGEND}", ""]
    return lines


def _section_op_exits(res: Results) -> list[str]:
    lines = ["### 5b. Exits per guest operation (osbench with a fixed count, minus a baseline boot)", ""]
    rows = []
    for name, label in OS:
        test = name[len("os_"):]
        d = res.op_exits.get(test)
        if not d:
            continue
        per_op: dict[str, float] = d["per_op"]
        total = sum(v for k, v in per_op.items() if is_exit(k))
        ns = d.get("ns_per_op")
        kinds = sorted((k for k, v in per_op.items() if v >= 0.1), key=lambda k: -per_op[k])[:6]
        rows.append([label, f"{d['ops']:,}", fmt_num(ns / 1000) if ns else "-", fmt_num(total),
                     fmt_num(ns / 1000 / total) if ns and total > 0 else "-",
                     ", ".join(f"`{k}` {per_op[k]:.2f}" for k in kinds)])
    if not rows:
        return lines + ["not measured in this run", ""]
    lines += _table(["operation", "ops", "us/op (this run)", "exits/op", "us per exit",
                     "per op by kind (exits and resume paths)"], rows)
    lines += ["", "One boot per operation, minus the median of baseline boots that run one null syscall: "
              "the counts cover the whole loop (page_fault's munmap too, which its timing excludes), and "
              "timer-driven kinds (`upcall`, `hypercall:24`, `kick`) carry the boots' run-to-run noise "
              "(a few hundred per boot) divided by the op count. Read these as counts, not timings. Exits/op "
              "sums the exit kinds only (see section 5 for which kinds are exits).", ""]
    return lines


BLOCK: list[tuple[str, str, float]] = [
    # name, label, bytes per op (for MB/s)
    ("blk_seq_read", "sequential read, 1 MiB requests", 1 << 20),
    ("blk_rand_read", "random read, 4 KiB", 4096),
    ("blk_seq_write", "sequential write, 1 MiB requests, then fsync", 1 << 20),
]


def _mb_s(s: Summary | None, nbytes: float) -> str:
    if s is None or s.median <= 0:
        return "-"
    return fmt_num(nbytes / (s.median * 1e-9) / 1e6)


# (Hospes name, native name, label, bytes per op or 0 for a round trip)
NETWORK: list[tuple[str, str, str, float]] = [
    ("net_gh_send", "net_send", "guest -> host, stream", 1 << 20),
    ("net_gh_send_p4", "net_send_p4", "guest -> host, 4 streams at once", 1 << 20),
    ("net_gh_recv", "net_recv", "host -> guest, stream", 1 << 20),
    ("net_gh_recv_p4", "net_recv_p4", "host -> guest, 4 streams at once", 1 << 20),
    ("net_gh_rr", "net_rr", "guest <-> host, 1-byte round trip", 0),
    ("net_gg_send", "net_send", "guest -> guest, stream", 1 << 20),
    ("net_gg_send_p4", "net_send_p4", "guest -> guest, 4 streams at once", 1 << 20),
    ("net_gg_recv", "net_recv", "guest <- guest, stream (the other direction)", 1 << 20),
    ("net_gg_recv_p4", "net_recv_p4", "guest <- guest, 4 streams at once (the other direction)", 1 << 20),
    ("net_gg_rr", "net_rr", "guest <-> guest, 1-byte round trip", 0),
]


def _block_rows(res: Results) -> list[str]:
    rows = []
    for name, label, nbytes in BLOCK:
        nat = res.summary("devices", name, ENV_NATIVE)
        hos = res.summary("devices", name, ENV_HOSPES)
        if nat is None and hos is None:
            continue
        rows.append([label, fmt_cell(nat, 1e-3), _mb_s(nat, nbytes), fmt_cell(hos, 1e-3), _mb_s(hos, nbytes),
                     fmt_ratio(hos, nat)])
    if not rows:
        return []
    return _table(["block (`bench/c/blkbench.c`, 64 MiB image)", "native us/op", "native MB/s",
                   "Hospes us/op", "Hospes MB/s", "Hospes / native"], rows) + [
        "", "Native: buffered I/O on the image file (the host page cache, where Hospes' "
        "backend reads too). Hospes: O_DIRECT on the guest's /dev/xvda (`hospes run --disk`), "
        "so every request goes blkfront -> ring -> Hospes' blkback -> pread/pwrite on the "
        "same file. QEMU is not compared (the initramfs carries no virtio modules).", ""]


#: blkbench's queue-depth figures: blk_qd<depth>_rand_read (Hospes only; see blkbench.c)
_QD_NAME = re.compile(r"blk_qd(\d+)_rand_read$")


def _queue_depth_rows(res: Results) -> list[str]:
    depths = sorted({int(m[1]) for ms in res.measurements if ms.suite == "devices" and ms.env == ENV_HOSPES
                     for m in [_QD_NAME.match(ms.name)] if m})
    if not depths:
        return []
    base = res.summary("devices", f"blk_qd{depths[0]}_rand_read", ENV_HOSPES)
    rows = []
    for d in depths:
        s = res.summary("devices", f"blk_qd{d}_rand_read", ENV_HOSPES)
        iops = fmt_num(1e9 / s.median) if s is not None and s.median > 0 else "-"
        rows.append([str(d), fmt_cell(s, 1e-3), iops, _mb_s(s, 4096), fmt_ratio(base, s)])
    return _table(["4 KiB random reads in flight (queue depth)", "Hospes us/request", "Hospes IOPS",
                   "Hospes MB/s", f"IOPS vs depth {depths[0]}"], rows) + [
        "", "O_DIRECT reads of /dev/xvda kept that many deep by one thread through Linux AIO "
        "(io_submit/io_getevents), so blkfront's ring holds that many requests; us/request is wall "
        "time over requests completed (min / median over samples). Hospes only: natively the image "
        "sits in the host's page cache, where buffered AIO does not queue.", ""]


def _network_rows(res: Results) -> list[str]:
    rows = []
    for name, native, label, nbytes in NETWORK:
        nat = res.summary("devices", native, ENV_NATIVE)
        hos = res.summary("devices", name, ENV_HOSPES)
        if hos is None:
            continue
        def rate(s: Summary | None, nbytes: float = nbytes) -> str:
            return _mb_s(s, nbytes) if nbytes else "-"
        rows.append([label, fmt_cell(nat, 1e-3), rate(nat), fmt_cell(hos, 1e-3), rate(hos), fmt_ratio(hos, nat)])
    if not rows:
        return []
    return _table(["TCP (`bench/c/netbench.c`)", "native us/op", "native MB/s", "Hospes us/op", "Hospes MB/s",
                   "Hospes / native"], rows) + [
        "", "An op is 1 MiB for a stream (timed until the receiver acknowledges the last byte; for 4 "
        "streams at once, 1 MiB of their total, one client thread driving all four) and one "
        "exchange for a round trip; the guest is always the side that connects and times. Guest <-> host: "
        "the guest's eth0 (netfront -> Hospes' netback -> a TAP, `hospes run --vif`) and the TAP moved "
        "into a private namespace. Guest <-> guest: two guests whose TAPs share a bridge there. Native: "
        "the same program between two namespaces joined by a veth pair, the same reference for both "
        "Hospes topologies. QEMU is not compared (the initramfs carries no virtio modules).", ""]


def _section_devices(res: Results) -> list[str]:
    lines = ["### 6. Devices", ""]
    lines += _block_rows(res) + _queue_depth_rows(res) + _network_rows(res)
    if res.devices or len(lines) == 2:
        lines += [res.devices or DEVICES_NONE, ""]
    return lines


def _mib(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def _section_memory(res: Results) -> list[str]:
    mem = res.memory
    lines = ["### 7. Memory overhead of the hospes process (MiB, guest idle)", ""]
    if not mem:
        return lines + [res.status.get("memory/hospes", "not measured in this run"), ""]
    rows = [
        ["guest RAM configured", _mib(mem.get("guest_ram_kb"))],
        ["guest memory touched (Rss of the memfd mapping)", _mib(mem.get("memfd_rss_kb"))],
        ["hospes process VmRSS", _mib(mem.get("vmrss_kb"))],
        ["**overhead: VmRSS - guest memory touched**", f"**{_mib(mem.get('overhead_kb'))}**"],
        ["  of which anonymous (RssAnon)", _mib(mem.get("rss_anon_kb"))],
        ["  of which file-backed (RssFile: python, libraries)", _mib(mem.get("rss_file_kb"))],
        ["peak VmHWM", _mib(mem.get("vmhwm_kb"))],
        ["for scale: python importing hospes, no guest (VmRSS)", _mib(mem.get("baseline_vmrss_kb"))],
    ]
    lines += _table(["figure", "MiB"], rows)
    lines += ["", f"Sampled {mem.get('idle_s', '?')} s after `hospes: userspace up` while the guest "
              "ran `sleep`. KVM's own kernel memory (shadow page tables) is not in the process RSS.", ""]
    return lines


def render_meta(meta: dict) -> list[str]:
    m = meta.get("machine", {})
    lines = [
        f"- Command: `{meta.get('command', '?')}`",
        f"- Date: {meta.get('date', '?')} (took {fmt_num(meta.get('duration_s', float('nan')))} s"
        + (", quick mode" if meta.get("quick") else "") + ")",
        f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory', '?')}; "
        f"host kernel {m.get('kernel', '?')}; KVM: {m.get('kvm', '?')}; TSC {m.get('tsc_khz', '?')} kHz; "
        f"load average at start {m.get('loadavg_at_start', '?')}",
        "- Other load on the machine (CPU busy in the second before each suite): "
        + (", ".join(f"{k} {v}" for k, v in meta.get("busy_before_suite", {}).items()) or "not recorded"),
        f"- Software: {m.get('os', '?')}, Python {m.get('python', '?')}, {m.get('qemu', 'no QEMU')}, "
        f"gcc {m.get('gcc', '?')}; Hospes {meta.get('hospes_commit', '?')}"
        + (f", sources {meta['hospes_sources']}" if meta.get("hospes_sources") else ""),
    ]
    return lines


def render_markdown(res: Results, heading_level: int = 2) -> str:
    """The whole results table as markdown (what docs/benchmarks.md embeds)."""
    h = "#" * heading_level
    lines = [f"{h} Results", ""]
    lines += render_meta(res.meta) + [""]
    lines += ["Cells: `min / median [range]`, range = (max - min) / median over the samples; "
              "ratios are of medians.", ""]
    for section in (_section_transitions, _section_boot, _section_compute, _section_os,
                    _section_exits, _section_op_exits, _section_devices, _section_memory):
        body = section(res)
        body[0] = body[0].replace("###", "#" * (heading_level + 1), 1)
        lines += body
    if res.errors:
        lines += [f"{'#' * (heading_level + 1)} Problems during this run", ""]
        lines += [f"- {e}" for e in res.errors] + [""]
    return "\n".join(lines).rstrip() + "\n"


def update_docs(doc: str, table_md: str) -> str:
    """Replace the results block of docs/benchmarks.md (or append one) with ``table_md``."""
    block = f"{DOCS_BEGIN}\n\n{table_md.rstrip()}\n\n{DOCS_END}"
    if _DOCS_BLOCK.search(doc):
        return _DOCS_BLOCK.sub(lambda _: block, doc, count=1)
    return doc.rstrip() + "\n\n" + block + "\n"
