"""Turning what the benchmarks print into numbers.

Every in-guest and native benchmark program prints lines of the form

    BENCH <name> key=value key=value ...

(see bench/c/*.c and bench/guests/nullcall.c); the shell wrapper run in guests
adds ``BENCHINFO key=value`` lines (e.g. the clocksource). ``hospes run --stats``
prints, on stderr,

    [hospes] poweroff after 11.66 s, first userspace line at 10.73 s
    [hospes]   writer                   80218
    [hospes]   hypercall:1              54062

Lines can arrive with kernel log lines interleaved and with CR LF endings, so
every parser here looks for its own lines and ignores the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BENCH = re.compile(r"(?:^|\s)BENCH\s+(?P<name>[A-Za-z0-9_.:-]+)(?P<fields>(?:\s+[A-Za-z0-9_]+=\S+)*)\s*$")
_INFO = re.compile(r"(?:^|\s)BENCHINFO(?P<fields>(?:\s+[A-Za-z0-9_]+=\S*)*)\s*$")
_FIELD = re.compile(r"([A-Za-z0-9_]+)=(\S*)")
_STATS_HEAD = re.compile(
    r"^\[hospes\] (?P<reason>\S+) after (?P<wall>[0-9.]+) s"
    r"(?:, first userspace line at (?P<first>[0-9.]+) s)?\s*$")
_STATS_LINE = re.compile(r"^\[hospes\]\s{2,}(?P<kind>\S+)\s+(?P<count>\d+)\s*$")
_SMAPS_HEAD = re.compile(r"^(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+)\s+\S+\s+\S+\s+\S+\s+\d+\s*(?P<path>.*)$")
_KB_FIELD = re.compile(r"^(?P<key>[A-Za-z_]+):\s+(?P<value>\d+) kB\s*$")


def _number(text: str) -> float | int | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


@dataclass(frozen=True)
class BenchRecord:
    """One ``BENCH`` line: a name and its key=value fields (numbers where they parse)."""

    name: str
    fields: dict[str, float | int | str]

    def value(self) -> float:
        """The figure this line reports, in its natural unit.

        ``ns_per_op`` as is; ``ns`` and ``n`` (the PV guest) -> ns per op;
        ``seconds`` (compute kernels) as is.
        """
        f = self.fields
        if "ns_per_op" in f:
            return float(f["ns_per_op"])
        if "ns" in f and "n" in f:
            n = float(f["n"])
            if n <= 0:
                raise ValueError(f"BENCH {self.name}: n must be positive, got {f['n']!r}")
            return float(f["ns"]) / n
        if "seconds" in f:
            return float(f["seconds"])
        raise ValueError(f"BENCH {self.name} has no value field (ns_per_op, ns+n or seconds): {f!r}")


def parse_bench_lines(text: str) -> list[BenchRecord]:
    """Every ``BENCH`` line in ``text``, in order."""
    out: list[BenchRecord] = []
    for line in _lines(text):
        m = _BENCH.search(line)
        if not m:
            continue
        fields = {k: _number(v) for k, v in _FIELD.findall(m.group("fields"))}
        out.append(BenchRecord(m.group("name"), fields))
    return out


def bench_values(text: str) -> dict[str, list[float]]:
    """``{name: [value, ...]}`` from the ``BENCH`` lines of ``text``, in order."""
    out: dict[str, list[float]] = {}
    for rec in parse_bench_lines(text):
        out.setdefault(rec.name, []).append(rec.value())
    return out


def parse_bench_info(text: str) -> dict[str, str]:
    """The ``BENCHINFO key=value`` pairs of ``text`` (a later key wins)."""
    info: dict[str, str] = {}
    for line in _lines(text):
        m = _INFO.search(line)
        if m:
            info.update(dict(_FIELD.findall(m.group("fields"))))
    return info


# Kinds in `hospes run --stats` that are exits (KVM_RUN returned to Hospes): hypercalls and
# guest system calls (the syscall port), exceptions (the exception port), kicks
# (KVM_EXIT_INTR), failsafe callbacks. The others count how Hospes resumed or what it
# did on the way, not extra exits: `writer` (the in-VM page-table writer ran before
# the guest resumed), `sregs_switch` (a mode switch through sync regs), `upcall` (an
# event delivered on resume), `ptwr` (a trap:14 emulated as a page-table write).
EXIT_FAMILIES = frozenset({"hypercall", "syscall", "trap", "kick", "failsafe"})


def is_exit(kind: str) -> bool:
    """Whether a `--stats` kind counts exits (see EXIT_FAMILIES)."""
    return kind.split(":", 1)[0] in EXIT_FAMILIES


# `cpu:guest_ms`, `cpu:kvm_ms`, `cpu:hospes_ms`: the vCPU threads' time by owner
# (hospes.cputime), milliseconds over the whole run; times, not counts.
CPU_TIME_KINDS = ("cpu:guest_ms", "cpu:kvm_ms", "cpu:hospes_ms")


def is_count(kind: str) -> bool:
    """Whether a `--stats` kind is a count (an exit or a resume path), not a CPU time."""
    return not kind.startswith("cpu:")


@dataclass
class ExitStats:
    """What ``hospes run --stats`` reported when the guest stopped."""

    reason: str | None = None
    wall_s: float | None = None
    first_userspace_s: float | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def exits(self) -> int:
        """Exits only (hypercall, syscall, trap, kick, failsafe), not the resume-path kinds."""
        return sum(n for k, n in self.counts.items() if is_exit(k))


def parse_exit_stats(text: str) -> ExitStats:
    """Parse the ``[hospes]`` stats block of a ``hospes run --stats`` stderr.

    Counts are keyed by kind as Hospes prints them (``hypercall:1``, ``trap:14``,
    ``writer``, ...). Lines before the head line (or without one) are taken too, so
    a partial block still gives its counts.
    """
    stats = ExitStats()
    for line in _lines(text):
        line = line.rstrip()
        m = _STATS_HEAD.match(line)
        if m:
            stats.reason = m.group("reason")
            stats.wall_s = float(m.group("wall"))
            stats.first_userspace_s = float(m.group("first")) if m.group("first") else None
            continue
        m = _STATS_LINE.match(line)
        if m:
            kind = m.group("kind")
            stats.counts[kind] = stats.counts.get(kind, 0) + int(m.group("count"))
    return stats


def exit_kind_family(kind: str) -> str:
    """``hypercall:17`` -> ``hypercall``; ``writer`` -> ``writer``."""
    return kind.split(":", 1)[0]


def parse_status_kb(text: str) -> dict[str, int]:
    """``/proc/<pid>/status`` -> ``{"VmRSS": kB, ...}`` (only the "N kB" fields)."""
    out: dict[str, int] = {}
    for line in _lines(text):
        m = _KB_FIELD.match(line.strip())
        if m:
            out[m.group("key")] = int(m.group("value"))
    return out


@dataclass
class Mapping:
    start: int
    end: int
    path: str
    kb: dict[str, int] = field(default_factory=dict)

    @property
    def size_kb(self) -> int:
        return (self.end - self.start) // 1024


def parse_smaps(text: str) -> list[Mapping]:
    """``/proc/<pid>/smaps`` -> one Mapping per VMA with its "N kB" fields."""
    maps: list[Mapping] = []
    for line in _lines(text):
        m = _SMAPS_HEAD.match(line)
        if m:
            maps.append(Mapping(int(m.group("start"), 16), int(m.group("end"), 16), m.group("path").strip()))
            continue
        m = _KB_FIELD.match(line.strip())
        if m and maps:
            maps[-1].kb[m.group("key")] = int(m.group("value"))
    return maps


def mapping_rss_kb(maps: list[Mapping], path_prefix: str) -> tuple[int, int]:
    """(Rss kB, size kB) summed over the mappings whose path starts with ``path_prefix``."""
    rss = size = 0
    for m in maps:
        if m.path.startswith(path_prefix):
            rss += m.kb.get("Rss", 0)
            size += m.size_kb
    return rss, size


_QEMU_FAILURE = re.compile(r"(KVM internal error[^\n]*|emulation failure|Suberror: \d+|"
                           r"KVM_EXIT_\w+|qemu-system-\S+: [^\n]+)")


def qemu_failure_reason(stderr: str) -> str | None:
    """A short reason from QEMU's stderr when it stopped on an error, else None.

    QEMU reports a failed KVM emulation as ``KVM internal error. Suberror: 1``
    followed by ``emulation failure`` and a register dump.
    """
    hits: list[str] = []
    for m in _QEMU_FAILURE.finditer(stderr):
        s = m.group(1).strip().rstrip(".")
        if s.startswith("qemu-system") and "terminating on signal" in s:
            continue
        if s not in hits:
            hits.append(s)
    return "; ".join(hits[:3]) if hits else None


def last_console_line(text: str) -> str | None:
    """The last non-empty console line (where a guest got to)."""
    for line in reversed(_lines(text)):
        if line.strip():
            return line.strip()
    return None


_CODE_LINE = re.compile(r"^Code=(?P<before>(?:[0-9a-f]{2} )*)<(?P<first>[0-9a-f]{2})>(?P<after>(?: [0-9a-f]{2})*)",
                        re.M)


def qemu_faulting_instruction(stderr: str) -> str | None:
    """The instruction at ``<..>`` in QEMU's ``Code=`` dump, disassembled (capstone), e.g.
    ``lock cmpxchg16b xmmword ptr [rbp + 0x20]``; None if there is no dump."""
    m = _CODE_LINE.search(stderr.replace("\r", ""))
    if not m:
        return None
    code = bytes.fromhex(m.group("first") + m.group("after").replace(" ", ""))
    try:
        import capstone

        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        for insn in md.disasm(code, 0):
            return f"{insn.mnemonic} {insn.op_str}".strip()
    except ImportError:
        pass
    return None
