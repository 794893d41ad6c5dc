"""Results -> the markdown table (results.md, docs/benchmarks.md) and JSON.

Every timed cell reads ``min / median [range]``: the best sample, the median
sample, and ``(max - min) / median`` so the noise of this machine stays visible.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from hospesbench.parse import CPU_TIME_KINDS, is_count, is_exit
from hospesbench.model import ENV_FLOOR, ENV_HOSPES, ENV_NATIVE, ENV_QKVM, ENV_TCG, Results
from hospesbench.stats import Summary, ratio

DOCS_BEGIN = "<!-- bench-results:begin (written by `bench/run.py --update-docs`) -->"
DOCS_END = "<!-- bench-results:end -->"
_DOCS_BLOCK = re.compile(r"<!-- bench-results:begin[^\n]*-->.*?<!-- bench-results:end -->", re.S)

# The C floors of bench/c/kvm_exit.c: (mode, label), in order. BENCH name: floor_<mode>.
FLOORS: list[tuple[str, str]] = [
    ("out", "plain exit: `out` at CPL 3 -> KVM_EXIT_IO -> KVM_RUN"),
    ("syscall", "syscall-stub exit: `syscall` -> LSTAR stub `out`, RIP/RFLAGS back through sync regs"),
    ("sregs", "syscall-stub exit + sregs switch (CS, SS, CR3 through sync regs)"),
    ("trap", "trap exit: `int3` -> IDT -> CPL-0 stub `out`, the stub's `iretq` back"),
    ("trap_sregs", "trap exit, resumed through sync regs (RIP/RSP/RFLAGS + CS/SS/CR3)"),
    ("writer", "syscall-stub exit + the one-store writer (CPL-0 store + `iretq`, CS through sync regs)"),
    ("cpuid", "in-KVM trap: `cpuid` at CPL 3, no exit to userspace"),
    ("idt", "in-VM exception: `int3` -> IDT -> CPL-0 `iretq`, no exit to userspace"),
]

# Hospes transitions timed in bench/guests/nullcall.c: (name, label, floor reference),
# the reference being the C floors of the same KVM operations as (count, floor mode).
Reference = tuple[tuple[int, str], ...]
HOSPES_TRANSITIONS: list[tuple[str, str, Reference]] = [
    ("hypercall_null", "null hypercall `xen_version(0)`", ((1, "syscall"),)),
    ("iret_kernel", "`HYPERVISOR_iret`, kernel -> kernel mode", ((1, "syscall"),)),
    ("trap_cpuid", "forced-emulation CPUID (#UD, emulated)", ((1, "trap_sregs"),)),
    ("trap_bounce", "`int3` bounced to the guest's handler -> `HYPERVISOR_iret`", ((1, "trap_sregs"), (1, "syscall"))),
    ("pf_kernel", "#PF in kernel mode bounced to the handler -> `HYPERVISOR_iret`",
     ((1, "trap_sregs"), (1, "syscall"))),
    ("user_syscall", "user-mode `syscall` -> kernel callback -> `HYPERVISOR_iret` to user", ((2, "sregs"),)),
    ("pf_user", "#PF in user mode bounced to the kernel -> `HYPERVISOR_iret` to user",
     ((1, "trap_sregs"), (1, "sregs"))),
    ("mmu_update_pte", "`mmu_update` of one PTE (validated, stored by the writer)", ((1, "writer"),)),
    ("update_va_invlpg", "`update_va_mapping` + UVMF_INVLPG", ((1, "writer"),)),
]

# (name, env, label) of every transition row, in order (the plots use it).
TRANSITIONS: list[tuple[str, str, str]] = (
    [(f"floor_{mode}", ENV_FLOOR, f"C floor: {label}") for mode, label in FLOORS]
    + [(name, ENV_HOSPES, f"Hospes {label}") for name, label, _ in HOSPES_TRANSITIONS])

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
    ("rootfs", "Debian rootfs to login"),
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

def _floor(res: Results, mode: str) -> Summary | None:
    return res.summary("transitions", f"floor_{mode}", ENV_FLOOR)


def reference_text(ref: Reference) -> str:
    """``2 x sregs``, ``trap_sregs + syscall``."""
    return " + ".join(f"{n} x {mode}" if n != 1 else mode for n, mode in ref)


def reference_ns(res: Results, ref: Reference) -> float | None:
    """The floor of a reference: the sum of its floors' medians (None if one is missing)."""
    total = 0.0
    for n, mode in ref:
        s = _floor(res, mode)
        if s is None:
            return None
        total += n * s.median
    return total


def _ratio_to(s: Summary | None, ns: float | None) -> str:
    if s is None or ns is None or ns <= 0:
        return "-"
    return f"{fmt_num(s.median / ns)}x"


def _derived_costs(res: Results) -> str:
    """What each step costs on its own, from the floors' minimums (the samples other load disturbed least)."""
    best = {mode: s.min for mode, _ in FLOORS if (s := _floor(res, mode)) is not None}
    parts = []
    for what, a, b in (("an sregs switch", "sregs", "syscall"), ("the writer", "writer", "syscall"),
                       ("a trap exit over a syscall-stub exit", "trap", "syscall"),
                       ("resuming a trap through sync regs instead of the stub's `iretq`", "trap_sregs", "trap")):
        if a in best and b in best:
            parts.append(f"{what} {fmt_num((best[a] - best[b]) / 1000)} us ({a} - {b})")
    for what, a in (("the in-KVM `cpuid`", "cpuid"), ("the in-VM exception round trip", "idt")):
        if a in best and "out" in best:
            parts.append(f"{what} {fmt_num(best[a] / best['out'] * 100)}% of a plain exit")
    return ("Step costs from the minimums: " + "; ".join(parts) + ".") if parts else ""


def _section_transitions(res: Results) -> list[str]:
    lines = ["### 1. C floors and Hospes transitions (us per round trip)", ""]
    out = _floor(res, "out")
    floor_rows = []
    for mode, label in FLOORS:
        s = _floor(res, mode)
        if s is not None:
            floor_rows.append([f"`{mode}`: {label}", fmt_cell(s, 1e-3), str(s.n),
                               "" if mode == "out" else fmt_ratio(s, out)])
    hospes_rows = []
    syscall = _floor(res, "syscall")
    for name, label, ref in HOSPES_TRANSITIONS:
        s = res.summary("transitions", name, ENV_HOSPES)
        if s is None:
            continue
        ref_ns = reference_ns(res, ref)
        hospes_rows.append([label, fmt_cell(s, 1e-3), str(s.n), reference_text(ref),
                            "-" if ref_ns is None else fmt_num(ref_ns / 1000), _ratio_to(s, ref_ns),
                            fmt_ratio(s, syscall)])
    if not floor_rows and not hospes_rows:
        status = res.status.get(f"transitions/{ENV_HOSPES}") or res.status.get(f"transitions/{ENV_FLOOR}")
        return lines + [status or "not measured in this run", ""]
    if floor_rows:
        lines += _table(["C floor (`bench/c/kvm_exit.c MODE`)", "min / median [range] us", "n", "x `out`"],
                        floor_rows)
        lines += ["", ("A 64-bit guest at CPL 3 (long mode, so it runs natively on this KVM) and a C loop "
                  "around KVM_RUN doing only what Hospes' return path must (`PvVcpu._resume`): each row is "
                  "one KVM path Hospes uses. `sregs` and `trap_sregs` alternate between two CS/SS pairs "
                  "and two page-table roots; `writer` is a copy of the trampoline's `writer1`. `cpuid` "
                  "and `idt` never leave KVM (one exit per batch). The modes run back to back in each "
                  "round, rounds interleaved with the nullcall boots. " + _derived_costs(res)).rstrip(), ""]
    if hospes_rows:
        lines += _table(["Hospes transition (`bench/guests/nullcall.c`)", "min / median [range] us", "n",
                         "floor of the same KVM operations", "floor us", "x that floor", "x `syscall`"],
                        hospes_rows)
        lines += ["", "Timed inside the PV guest with rdtsc scaled by the pvclock (tsc_to_system_mul/shift); "
                  "each sample is the mean of a batch. The floor column sums the medians of the C floors "
                  "the same transition passes through in Hospes: a hypercall or `HYPERVISOR_iret` that "
                  "stays in one mode is a syscall-stub exit with plain register writes; every exception "
                  "exit is resumed through sync regs (`trap_sregs`: the CPU is in the CPL-0 stub, so CS "
                  "changes even when the mode does not; the floor also reloads CR3, which a kernel-mode "
                  "trap does not); a change between guest user and kernel mode is an `sregs` switch; a "
                  "page-table store is the writer (`update_va_mapping`'s invlpg runs in the full writer, "
                  "a few instructions more than `writer1`).", ""]
    return lines


# --- the goals of issue 10 ----------------------------------------------------------

BOOT_EXITS_BEFORE = 160_000        # exits + writer runs of a busybox boot when issue 10 was filed
_QD_NAME = re.compile(r"blk_qd(\d+)_rand_read")


@dataclass(frozen=True)
class Goal:
    """One goal: what it asks, what this run measured, and whether that meets it."""

    goal: str
    measured: str            # the figures the ratio comes from, or why there are none
    ratio: float | None      # None: not measured
    target: str              # "<= 1.25x"
    met: bool | None         # None: not measured


def _ratio_goal(goal: str, a: Summary | None, a_what: str, b: float | None, b_what: str, limit: float,
                at_most: bool = True, unit: str = "us", scale: float = 1e-3) -> Goal:
    target = f"{'<=' if at_most else '>='} {fmt_num(limit)}x"
    if a is None or b is None or b <= 0:
        missing = [w for w, v in ((a_what, a), (b_what, b)) if v is None]
        return Goal(goal, "not measured (" + ", ".join(missing) + ")", None, target, None)
    r = a.median / b
    return Goal(goal, f"{a_what} {fmt_num(a.median * scale)} {unit} / {b_what} {fmt_num(b * scale)} {unit}", r,
                target, r <= limit if at_most else r >= limit)


def _transition_goal(res: Results, name: str, goal: str, limit: float) -> Goal:
    ref = next(r for n, _, r in HOSPES_TRANSITIONS if n == name)
    return _ratio_goal(goal, res.summary("transitions", name, ENV_HOSPES), f"Hospes `{name}`",
                       reference_ns(res, ref), f"floor ({reference_text(ref)})", limit)


def boot_exit_totals(res: Results) -> list[int]:
    """Exits plus writer runs of each busybox boot (`hospes run --stats`)."""
    return [sum(n for k, n in run.items() if is_exit(k) or k == "writer") for run in res.exit_runs.get("boot", [])]


def boot_cpu_split(res: Results) -> dict[str, float] | None:
    """Median seconds of each busybox boot's vCPU time by owner (``cpu:guest_ms`` ...), whole run."""
    runs = [r for r in res.exit_runs.get("boot", []) if all(k in r for k in CPU_TIME_KINDS)]
    if not runs:
        return None
    return {k: statistics.median(r[k] for r in runs) / 1000 for k in CPU_TIME_KINDS}


def boot_floor_sentence(res: Results) -> str | None:
    """What the boot costs before any Python: guest mode plus KVM, against TCG's whole boot."""
    split = boot_cpu_split(res)
    tcg = res.summary("boot", "poweroff", ENV_TCG)
    if split is None:
        return None
    guest, kvm, py = (split[k] for k in CPU_TIME_KINDS)
    text = (f"Where a Hospes boot's vCPU time goes (median over the boots, the whole run to poweroff, "
            f"`cpu:*_ms` of `--stats`): guest mode {fmt_num(guest)} s, the host kernel (KVM's exit "
            f"handling) {fmt_num(kvm)} s, Hospes in user space (its Python, the user side of its ioctls) "
            f"{fmt_num(py)} s.")
    if tcg is not None and tcg.median > 0:
        text += (f" Guest mode plus KVM alone, time Hospes' Python is not in, is {fmt_num(guest + kvm)} s: "
                 f"{fmt_num((guest + kvm) / tcg.median)}x QEMU TCG's whole run to poweroff "
                 f"({fmt_num(tcg.median)} s).")
    return text


def block_qd_iops(res: Results) -> dict[int, float]:
    """Queue depth -> median IOPS of Hospes' 4 KiB random O_DIRECT reads (blkbench ``blk_qd<D>_rand_read``)."""
    out: dict[int, float] = {}
    for m in res.measurements:
        match = _QD_NAME.fullmatch(m.name)
        if m.suite == "devices" and m.env == ENV_HOSPES and match and m.samples:
            ns = m.summary().median
            if ns > 0:
                out[int(match.group(1))] = 1e9 / ns
    return out


def goals(res: Results) -> list[Goal]:
    floor_sys = _floor(res, "syscall")
    out = [
        _ratio_goal("Null hypercall <= 1.25x the C syscall-stub floor",
                    res.summary("transitions", "hypercall_null", ENV_HOSPES), "Hospes `hypercall_null`",
                    None if floor_sys is None else floor_sys.median, "floor (syscall)", 1.25),
        _transition_goal(res, "user_syscall", "User syscall round trip <= 1.5x its floor", 1.5),
        _transition_goal(res, "pf_user", "#PF bounce (user mode) <= 1.5x its floor", 1.5),
        _transition_goal(res, "iret_kernel", "`HYPERVISOR_iret` <= 1.5x its floor", 1.5),
    ]
    native = res.summary("os", "os_clock_gettime", ENV_NATIVE)
    out.append(_ratio_goal("`clock_gettime` in guest user space <= 3x native",
                           res.summary("os", "os_clock_gettime", ENV_HOSPES), "Hospes",
                           None if native is None else native.median, "native", 3.0))
    tcg = res.summary("boot", "userspace", ENV_TCG)
    out.append(_ratio_goal("Busybox boot to userspace <= QEMU TCG's median",
                           res.summary("boot", "userspace", ENV_HOSPES), "Hospes",
                           None if tcg is None else tcg.median, "QEMU TCG", 1.0, unit="s", scale=1.0))
    totals = boot_exit_totals(res)
    goal = f"Exits + writer runs per busybox boot <= half of ~{BOOT_EXITS_BEFORE // 1000}k"
    if totals:
        med = statistics.median(totals)
        out.append(Goal(goal, f"{med:,.0f} (median of {len(totals)} boots) / {BOOT_EXITS_BEFORE:,}",
                        med / BOOT_EXITS_BEFORE, "<= 0.50x", med <= BOOT_EXITS_BEFORE / 2))
    else:
        out.append(Goal(goal, "not measured (no boot exit counts)", None, "<= 0.50x", None))
    iops = block_qd_iops(res)
    goal = "Block 4 KiB random reads: IOPS at QD16 >= 4x QD1"
    if 1 in iops and 16 in iops:
        r = iops[16] / iops[1]
        out.append(Goal(goal, f"QD16 {fmt_num(iops[16])} IOPS / QD1 {fmt_num(iops[1])} IOPS", r, ">= 4x", r >= 4.0))
    else:
        out.append(Goal(goal, "not measured (no `blk_qd1_rand_read`/`blk_qd16_rand_read` figures)", None,
                        ">= 4x", None))
    return out


def _section_goals(res: Results) -> list[str]:
    lines = ["### Goals of issue 10 (ratios of medians within this run)", ""]
    rows = []
    for g in goals(res):
        met = "not measured" if g.met is None else ("met" if g.met else "**not met**")
        rows.append([g.goal, g.measured, "-" if g.ratio is None else f"{fmt_num(g.ratio)}x", g.target, met])
    lines += _table(["goal", "measured (medians)", "ratio", "target", "met?"], rows)
    lines += ["", "The transition floors are section 1's references (the C floors of the same KVM "
              "operations); exits per boot count every exit kind plus `writer` of the `boot` workload "
              "(section 5).", ""]
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
    floor = boot_floor_sentence(res)
    if floor is not None:
        lines += ["", floor]
    return lines + [""]


ROOTFS_ENVS: list[tuple[str, str]] = [
    (ENV_HOSPES, "Hospes (`hospes run --bootloader pygrub`, xvda)"),
    (ENV_TCG, "QEMU TCG (`-M pc,accel=tcg`, virtio disk, kernel and initrd read from the image)"),
]


def _section_rootfs(res: Results) -> list[str]:
    lines = ["### 2b. Debian root filesystem: boot to the login prompt (s, wall, from process start)", ""]
    rows = []
    for env, label in ROOTFS_ENVS:
        s = res.summary("rootfs", "login", env)
        status = res.status.get(f"rootfs/{env}")
        if s is not None:
            rows.append([label, fmt_cell(s), str(s.n), status or ""])
        elif status:
            rows.append([label, "-", "0", status])
    if not rows:
        return lines + ["not measured in this run (the `rootfs` suite is not in the default set)", ""]
    lines += _table(["guest", "login prompt", "n", "note"], rows)
    hos, tcg = res.summary("rootfs", "login", ENV_HOSPES), res.summary("rootfs", "login", ENV_TCG)
    if hos is not None and tcg is not None:
        lines += ["", f"Hospes / QEMU TCG: {fmt_ratio(hos, tcg)}."]
    image = res.meta.get("rootfs_image")
    lines += ["", "The same disk image (`hospes image --rootfs`" + (f", {image}" if image else "")
              + "), a fresh copy per boot, 1 GiB and 2 vCPUs, systemd to `login:` on the console.", ""]
    return lines


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
    order = sorted((k for k in totals if is_count(k)), key=lambda k: (-totals[k], k))
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
        kinds = sorted((k for k, v in per_op.items() if v >= 0.1 and is_count(k)), key=lambda k: -per_op[k])[:6]
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
    for section in (_section_goals, _section_transitions, _section_boot, _section_rootfs, _section_compute,
                    _section_os,
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
