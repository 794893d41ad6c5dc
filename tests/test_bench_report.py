"""The benchmark harness's own logic (bench/hospesbench), without running KVM.

Timing lives only in bench/; these tests check that what the bench programs print
becomes the right numbers (console BENCH lines, `hospes run --stats` blocks,
/proc files), that min/median/spread are computed correctly, and that the
markdown/JSON rendering and the docs update are right.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from hospesbench import parse  # noqa: E402
from hospesbench.model import ENV_FLOOR, ENV_HOSPES, ENV_NATIVE, ENV_QKVM, ENV_TCG, Results  # noqa: E402
from hospesbench.report import (DEVICES_NONE, DOCS_BEGIN, DOCS_END, fmt_cell, fmt_num,  # noqa: E402
                                render_markdown, update_docs)
from hospesbench.stats import median_counts, per_op_counts, ratio, summarize  # noqa: E402


# --- console lines -> numbers --------------------------------------------------------

NULLCALL_CONSOLE = (
    "nullcall: n=2000 rounds=3 tsc_khz=2100000 mul=4090445043 shift=-1\r\n"
    "BENCH hypercall_null n=2000 cycles=182651888 ns=86977089 tsc_khz=2100000\r\n"
    "BENCH trap_cpuid n=2000 cycles=446795732 ns=212759872 tsc_khz=2100000\r\n"
    "[    9.828528] xen:xen_privcmd: No target domain found\n"
    "BENCH hypercall_null n=2000 cycles=248643906 ns=118401859 tsc_khz=2100000\n"
    "PASS nullcall\nDONE\n"
)


def test_bench_lines_ns_and_n_give_ns_per_op():
    recs = parse.parse_bench_lines(NULLCALL_CONSOLE)
    assert [r.name for r in recs] == ["hypercall_null", "trap_cpuid", "hypercall_null"]
    assert recs[0].fields == {"n": 2000, "cycles": 182651888, "ns": 86977089, "tsc_khz": 2100000}
    assert recs[0].value() == pytest.approx(86977089 / 2000)
    vals = parse.bench_values(NULLCALL_CONSOLE)
    assert vals["hypercall_null"] == [pytest.approx(43488.5445), pytest.approx(59200.9295)]
    assert vals["trap_cpuid"] == [pytest.approx(106379.936)]


def test_bench_lines_ns_per_op_and_seconds():
    text = ("BENCH os_null_syscall ns_per_op=166894.3 iters=637\n"
            "noise BENCH floor_out ns_per_op=22999.4 iters=20000\n"
            "BENCH compute_int seconds=0.258978 check=8501073610681655636\n")
    vals = parse.bench_values(text)
    assert vals == {"os_null_syscall": [166894.3], "floor_out": [22999.4], "compute_int": [0.258978]}
    recs = parse.parse_bench_lines(text)
    assert recs[2].fields["check"] == 8501073610681655636


def test_bench_lines_ignore_lookalikes():
    text = ("BENCHMARK foo ns_per_op=1\n"          # not the BENCH keyword
            "BENCH broken ns_per_op=1 trailing words\n"
            "the BENCH line's name\n"
            "BENCH ok ns_per_op=2.5\n")
    assert parse.bench_values(text) == {"ok": [2.5]}


def test_bench_line_without_value_is_an_error():
    rec = parse.parse_bench_lines("BENCH x iters=3\n")[0]
    with pytest.raises(ValueError):
        rec.value()
    with pytest.raises(ValueError):
        parse.parse_bench_lines("BENCH x n=0 ns=5\n")[0].value()


def test_bench_info():
    text = "hospes: userspace up\nBENCHINFO clocksource=xen\nBENCHINFO clocksource=tsc other=1\n"
    assert parse.parse_bench_info(text) == {"clocksource": "tsc", "other": "1"}


# --- stats lines -> exit counts --------------------------------------------------------

STATS_STDERR = """\
kernel: /root/.cache/hospes/debian/6.1.0-56-cloud-amd64/vmlinuz

[hospes] poweroff after 11.66 s, first userspace line at 10.73 s
[hospes]   writer                   80218
[hospes]   hypercall:1              54062
[hospes]   trap:13                  5798
[hospes]   upcall                   2104
[hospes]   syscall                  1668
"""


def test_exit_stats():
    st = parse.parse_exit_stats(STATS_STDERR)
    assert st.reason == "poweroff"
    assert st.wall_s == pytest.approx(11.66)
    assert st.first_userspace_s == pytest.approx(10.73)
    assert st.counts == {"writer": 80218, "hypercall:1": 54062, "trap:13": 5798, "upcall": 2104,
                         "syscall": 1668}
    assert st.exits == 54062 + 5798 + 1668      # writer and upcall are not exits


def test_exit_stats_without_userspace_and_with_crlf():
    st = parse.parse_exit_stats("[hospes] crash after 2.93 s\r\n[hospes]   hypercall:17             6050\r\n")
    assert st.reason == "crash" and st.wall_s == pytest.approx(2.93) and st.first_userspace_s is None
    assert st.counts == {"hypercall:17": 6050}


def test_exit_stats_absent():
    st = parse.parse_exit_stats("hospes: the guest crashed\n")
    assert st.reason is None and st.counts == {} and st.exits == 0


def test_exit_kind_family():
    assert parse.exit_kind_family("hypercall:17") == "hypercall"
    assert parse.exit_kind_family("writer") == "writer"
    assert [k for k in ("hypercall:1", "syscall", "trap:14", "kick", "failsafe", "writer", "sregs_switch",
                        "upcall", "ptwr") if parse.is_exit(k)] == ["hypercall:1", "syscall", "trap:14", "kick",
                                                                    "failsafe"]


# --- /proc parsing ---------------------------------------------------------------------

SMAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 123 /usr/bin/python3.11
Size:                  4 kB
Rss:                   4 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 2048 /memfd:hospes-guest (deleted)
Size:             262144 kB
Rss:              120000 kB
Pss:              120000 kB
7f0010000000-7f0010400000 rw-s 10000000 00:01 2048 /memfd:hospes-guest (deleted)
Size:               4096 kB
Rss:                1000 kB
7f0020000000-7f0020021000 rw-p 00000000 00:00 0
Size:                132 kB
Rss:                  64 kB
"""


def test_smaps_memfd_rss():
    maps = parse.parse_smaps(SMAPS)
    assert len(maps) == 4
    assert maps[1].path == "/memfd:hospes-guest (deleted)"
    assert maps[1].kb["Rss"] == 120000 and maps[1].size_kb == 262144
    assert maps[3].path == ""
    assert parse.mapping_rss_kb(maps, "/memfd:hospes-guest") == (121000, 262144 + 4096)
    assert parse.mapping_rss_kb(maps, "/nothing") == (0, 0)


def test_status_kb():
    text = "Name:\thospes\nVmHWM:\t  400000 kB\nVmRSS:\t  350000 kB\nRssAnon:\t   90000 kB\nThreads:\t4\n"
    assert parse.parse_status_kb(text) == {"VmHWM": 400000, "VmRSS": 350000, "RssAnon": 90000}


def test_qemu_failure_reason():
    err = ("KVM internal error. Suberror: 1\nextra data[0]: 0x0000000000000000\n"
           "emulation failure\nRAX=0000000000000000 RBX=...\n")
    assert parse.qemu_failure_reason(err) == "KVM internal error. Suberror: 1; emulation failure"
    assert parse.qemu_failure_reason("qemu-system-x86_64: terminating on signal 15 from pid 1\n") is None
    assert parse.qemu_failure_reason("") is None


def test_qemu_faulting_instruction():
    err = ("KVM internal error. Suberror: 1\nemulation failure\n"
           "Code=24 5b 80 41 81 e3 00 00 00 40 48 8b 4c 24 58 74 31 48 89 f0 <f0> 48 0f c7 4d 20 74 66 4c\n")
    assert parse.qemu_faulting_instruction(err) == "lock cmpxchg16b xmmword ptr [rbp + 0x20]"
    assert parse.qemu_faulting_instruction("no dump here") is None


def test_last_console_line():
    assert parse.last_console_line("a\r\n[  1.0] b  \n\n") == "[  1.0] b"
    assert parse.last_console_line("\n \n") is None


# --- min / median / spread ---------------------------------------------------------------

def test_summary_odd_and_even():
    s = summarize([5, 1, 3])
    assert (s.n, s.min, s.median, s.max) == (3, 1, 3, 5)
    assert s.mean == pytest.approx(3) and s.stdev == pytest.approx(2)
    assert s.spread == pytest.approx((5 - 1) / 3)
    e = summarize([4, 1, 3, 2])
    assert e.median == pytest.approx(2.5) and e.spread == pytest.approx(3 / 2.5)


def test_summary_single_and_errors():
    s = summarize([7.5])
    assert (s.min, s.median, s.max, s.stdev, s.spread) == (7.5, 7.5, 7.5, 0.0, 0.0)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, math.nan])


def test_summary_scaled_and_ratio():
    s = summarize([1000, 2000, 4000]).scaled(1e-3)
    assert (s.min, s.median, s.max) == pytest.approx((1, 2, 4))
    assert s.spread == pytest.approx(1.5)      # unchanged by the unit
    assert ratio(summarize([10, 20, 30]), summarize([2, 4, 6])) == pytest.approx(5)
    assert ratio(summarize([1]), summarize([0])) == math.inf


def test_median_counts():
    runs = [{"writer": 10, "trap:14": 3}, {"writer": 12}, {"writer": 11, "trap:14": 5}]
    assert median_counts(runs) == {"trap:14": 3, "writer": 11}


def test_per_op_counts():
    base = {"writer": 1000, "upcall": 50, "trap:13": 5}
    run = {"writer": 9000, "syscall": 2000, "hypercall:23": 2000, "upcall": 40, "trap:13": 5}
    assert per_op_counts(run, base, 2000) == {"hypercall:23": 1.0, "syscall": 1.0, "trap:13": 0.0,
                                              "upcall": -0.005, "writer": 4.0}
    with pytest.raises(ValueError):
        per_op_counts(run, base, 0)


# --- rendering ------------------------------------------------------------------------------

def test_fmt_num_and_cell():
    assert fmt_num(12345.6) == "12,346"
    assert fmt_num(123.4) == "123"
    assert fmt_num(12.34) == "12.3"
    assert fmt_num(1.234) == "1.23"
    assert fmt_num(0.01234) == "0.0123"
    assert fmt_num(0) == "0"
    assert fmt_cell(None) == "-"
    assert fmt_cell(summarize([20000, 30000, 40000]), 1e-3) == "20.0 / 30.0 [67%]"
    assert fmt_cell(summarize([3.0])) == "3.00 (n=1)"


def sample_results() -> Results:
    r = Results()
    r.meta = {"command": ".venv/bin/python bench/run.py", "date": "2026-11-26 12:00 UTC", "duration_s": 900,
              "quick": False, "hospes_commit": "abc123 (main)",
              "machine": {"cpu": "Test CPU", "cores": "2", "memory": "24 GiB RAM", "kernel": "6.18",
                          "kvm": "PVM (kvm_pvm)", "os": "Debian 12", "python": "3.11.7", "qemu": "QEMU 7.2",
                          "gcc": "12.2.0"}}
    r.add("transitions", "floor_out", ENV_FLOOR, "ns", [20000, 22000, 24000])
    r.add("transitions", "floor_syscall", ENV_FLOOR, "ns", [25000, 26000])
    r.add("transitions", "hypercall_null", ENV_HOSPES, "ns", [40000, 44000, 60000])
    r.add("boot", "userspace", ENV_HOSPES, "s", [10.0, 11.0])
    r.add("boot", "poweroff", ENV_HOSPES, "s", [12.0, 13.0])
    r.add("boot", "userspace", ENV_TCG, "s", [3.0, 3.2])
    r.add("boot", "poweroff", ENV_TCG, "s", [3.5, 3.6])
    r.status["boot/qemu-kvm"] = "failed after 95.0 s: KVM internal error. Suberror: 1; emulation failure"
    r.add("rootfs", "login", ENV_HOSPES, "s", [90.0, 100.0])
    r.add("cpu", "compute_int", ENV_NATIVE, "s", [0.26, 0.27])
    r.add("cpu", "compute_int", ENV_HOSPES, "s", [0.27, 0.28])
    r.add("os", "os_null_syscall", ENV_NATIVE, "ns", [120, 130])
    r.add("os", "os_null_syscall", ENV_HOSPES, "ns", [166000, 180000])
    r.add("os", "os_null_syscall", ENV_TCG, "ns", [500, 600])
    r.add_exit_run("boot", {"writer": 100, "hypercall:1": 50})
    r.add_exit_run("boot", {"writer": 110, "hypercall:1": 50})
    r.add_exit_run("osbench", {"writer": 300, "hypercall:1": 55, "syscall": 40})
    r.op_exits["null_syscall"] = {"ops": 3000, "ns_per_op": 200000.0,
                                  "per_op": {"syscall": 1.0, "writer": 2.0, "hypercall:23": 1.0, "upcall": 0.01}}
    r.devices = DEVICES_NONE
    r.memory = {"idle_s": 8, "guest_ram_kb": 262144, "memfd_rss_kb": 102400, "vmrss_kb": 204800,
                "overhead_kb": 102400, "rss_anon_kb": 80000, "rss_file_kb": 20000, "vmhwm_kb": 210000,
                "baseline_vmrss_kb": 40000}
    return r


def test_markdown_rendering():
    md = render_markdown(sample_results())
    lines = md.splitlines()
    assert lines[0] == "## Results"
    assert "- Command: `.venv/bin/python bench/run.py`" in lines
    assert any("KVM: PVM (kvm_pvm)" in ln for ln in lines)
    # transitions: us, ratio to the floor of the same KVM operations (here the syscall floor, 25.5 us)
    row = next(ln for ln in lines if ln.startswith("| null hypercall"))
    assert row == "| null hypercall `xen_version(0)` | 40.0 / 44.0 [45%] | 3 | syscall | 25.5 | 1.73x | 1.73x |"
    row = next(ln for ln in lines if ln.startswith("| `syscall`: syscall-stub exit"))
    assert row.endswith("| 25.0 / 25.5 [4%] | 2 | 1.16x |")
    # boot: the failed QEMU KVM attempt is reported as it fared
    assert any("failed after 95.0 s: KVM internal error" in ln for ln in lines)
    hospes_boot = next(ln for ln in lines if ln.startswith("| Hospes (`hospes run`)"))
    assert "10.0 / 10.5 [10%]" in hospes_boot and "12.0 / 12.5 [8%]" in hospes_boot
    # OS microbenchmarks in us with both ratios
    row = next(ln for ln in lines if ln.startswith("| null syscall"))
    assert row == "| null syscall (getppid) | 0.120 / 0.125 [8%] | 166 / 173 [8%] | 0.500 / 0.550 [18%] | 1,384x | 315x |"
    # exit counts: medians, boot-relative deltas for workloads that include a boot
    head = next(ln for ln in lines if ln.startswith("| kind |"))
    assert head == "| kind | boot (`uname -a`) | osbench | osbench minus boot |"
    assert "| `hypercall:1` | 50 | 55 | +5 |" in lines
    assert "| `syscall` | 0 | 40 | +40 |" in lines
    assert "| **exits** | **50** | **95** | **+45** |" in lines
    assert "| `writer` (not an exit) | 105 | 300 | +195 |" in lines
    assert ("| null syscall (getppid) | 3,000 | 200 | 2.00 | 100 | `writer` 2.00, `syscall` 1.00, "
            "`hypercall:23` 1.00 |") in lines
    assert DEVICES_NONE in lines
    assert "| **overhead: VmRSS - guest memory touched** | **100.0** |" in lines
    # empty sections say so rather than vanish
    assert md.count("not measured in this run") == 0
    assert render_markdown(Results()).count("not measured in this run") == 8


def test_markdown_heading_level_and_errors():
    r = sample_results()
    r.errors.append("suite os crashed: boom")
    md = render_markdown(r, heading_level=1)
    assert md.startswith("# Results\n")
    assert "## 1. C floors and Hospes transitions (us per round trip)" in md
    assert "## Goals of issue 10 (ratios of medians within this run)" in md
    assert "## Problems during this run" in md and "- suite os crashed: boom" in md


def test_json_roundtrip():
    r = sample_results()
    doc = json.loads(r.to_json())
    assert doc["schema"] == "hospes-bench/1"
    m = next(m for m in doc["measurements"] if m["name"] == "hypercall_null")
    assert m["summary"]["median"] == 44000 and m["summary"]["min"] == 40000
    assert m["summary"]["spread"] == pytest.approx(20000 / 44000)
    assert doc["exit_counts"]["boot"]["median"] == {"hypercall:1": 50, "writer": 105}
    back = Results.from_json(r.to_json())
    assert render_markdown(back) == render_markdown(r)
    with pytest.raises(ValueError):
        Results.from_dict({"schema": "other"})


def test_devices_section():
    from hospesbench.suites import devices_sentence

    assert devices_sentence([], False) == DEVICES_NONE
    assert devices_sentence(["block"], True) == "network: not measured (no net backend)"
    assert devices_sentence(["block"], False) == ("block: not measured yet; "
                                                  "network: not measured (no net backend)")
    assert devices_sentence(["block", "net"], True, False, "needs root") == "network: not measured (needs root)"
    assert devices_sentence(["block", "net"], True, True) == ""
    r = Results()
    r.add("devices", "blk_seq_read", ENV_NATIVE, "ns", [125000, 131072])
    r.add("devices", "blk_seq_read", ENV_HOSPES, "ns", [10485760, 10485760])
    r.devices = "network: not measured (no net backend)"
    lines = render_markdown(r).splitlines()
    row = next(ln for ln in lines if ln.startswith("| sequential read"))
    assert row == "| sequential read, 1 MiB requests | 125 / 128 [5%] | 8,190 | 10,486 / 10,486 [0%] | 100 | 81.9x |"
    assert "network: not measured (no net backend)" in lines


def test_queue_depth_rows_give_iops_against_the_lowest_depth():
    r = Results()
    r.add("devices", "blk_qd1_rand_read", ENV_HOSPES, "ns", [1_000_000, 1_200_000])
    r.add("devices", "blk_qd16_rand_read", ENV_HOSPES, "ns", [100_000, 110_000])
    r.add("devices", "blk_qd4_rand_read", ENV_HOSPES, "ns", [300_000])
    r.add("devices", "blk_qd4_rand_read", ENV_NATIVE, "ns", [50_000])     # not a Hospes figure: ignored
    lines = render_markdown(r).splitlines()
    rows = [ln for ln in lines if ln.startswith("| 1 |") or ln.startswith("| 4 |") or ln.startswith("| 16 |")]
    assert rows == [
        "| 1 | 1,000 / 1,100 [18%] | 909 | 3.72 | 1.00x |",
        "| 4 | 300 (n=1) | 3,333 | 13.7 | 3.67x |",
        "| 16 | 100 / 105 [10%] | 9,524 | 39.0 | 10.5x |",
    ]
    assert any(ln.startswith("| 4 KiB random reads in flight (queue depth) |") for ln in lines)
    assert not any("in flight (queue depth)" in ln for ln in render_markdown(Results()).splitlines())


def test_network_rows_pair_each_topology_with_the_veth_reference():
    r = Results()
    r.add("devices", "net_send", ENV_NATIVE, "ns", [1_000_000, 1_048_576])
    r.add("devices", "net_rr", ENV_NATIVE, "ns", [20_000, 30_000])
    r.add("devices", "net_gh_send", ENV_HOSPES, "ns", [4_194_304, 4_194_304])
    r.add("devices", "net_gg_send", ENV_HOSPES, "ns", [10_485_760])
    r.add("devices", "net_gh_rr", ENV_HOSPES, "ns", [1_000_000, 1_500_000])
    r.add("devices", "net_recv", ENV_NATIVE, "ns", [1_000_000])     # no Hospes figure: no row
    lines = render_markdown(r).splitlines()
    assert "| guest -> host, stream | 1,000 / 1,024 [5%] | 1,024 | 4,194 / 4,194 [0%] | 250 | 4.09x |" in lines
    assert "| guest <-> host, 1-byte round trip | 20.0 / 25.0 [40%] | - | 1,000 / 1,250 [40%] | - | 50.0x |" in lines
    assert "| guest -> guest, stream | 1,000 / 1,024 [5%] | 1,024 | 10,486 (n=1) | 100 | 10.2x |" in lines
    assert not any(ln.startswith("| host -> guest") for ln in lines)
    r.add("devices", "net_send_p4", ENV_NATIVE, "ns", [500_000])
    r.add("devices", "net_gh_send_p4", ENV_HOSPES, "ns", [2_097_152])
    lines = render_markdown(r).splitlines()
    streams = [ln.split(" |")[0] for ln in lines if ln.startswith("| guest -> host")]
    assert streams == ["| guest -> host, stream", "| guest -> host, 4 streams at once"]
    assert "| guest -> host, 4 streams at once | 500 (n=1) | 2,097 | 2,097 (n=1) | 500 | 4.19x |" in lines
    # everything measured: no "not measured" sentence under the tables
    assert DEVICES_NONE not in lines


def test_add_appends_samples():
    r = Results()
    r.add("os", "x", ENV_HOSPES, "ns", [1, 2])
    r.add("os", "x", ENV_HOSPES, "ns", [3])
    r.add("os", "x", ENV_QKVM, "ns", [])
    assert [m.samples for m in r.measurements] == [[1.0, 2.0, 3.0]]


def test_update_docs_replaces_only_the_block():
    doc = f"# Benchmarks\n\nintro\n\n{DOCS_BEGIN}\n\nold table\n\n{DOCS_END}\n\n## After\n\nkept\n"
    new = update_docs(doc, "## Results\n\nnew table\n")
    assert "old table" not in new and "new table" in new
    assert new.startswith("# Benchmarks\n\nintro\n\n") and new.endswith("## After\n\nkept\n")
    assert update_docs(new, "## Results\n\nnew table\n") == new      # idempotent
    appended = update_docs("# Benchmarks\n", "T\n")
    assert appended == f"# Benchmarks\n\n{DOCS_BEGIN}\n\nT\n\n{DOCS_END}\n"


def test_docs_file_has_the_block():
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    assert DOCS_BEGIN in doc and DOCS_END in doc
    assert doc.index(DOCS_BEGIN) < doc.index(DOCS_END)


# --- floors, transitions as multiples of them, goals -------------------------------------

def floor_results() -> Results:
    r = Results()
    for mode, ns in (("out", [40000, 42000]), ("syscall", [44000, 46000]), ("sregs", [50000, 52000]),
                     ("trap", [60000]), ("trap_sregs", [62000, 64000]), ("writer", [70000]),
                     ("cpuid", [21000]), ("idt", [30000])):
        r.add("transitions", f"floor_{mode}", ENV_FLOOR, "ns", ns)
    r.add("transitions", "hypercall_null", ENV_HOSPES, "ns", [50000, 56000])       # 56 / 45 = 1.2x: met
    r.add("transitions", "user_syscall", ENV_HOSPES, "ns", [200000])               # 200 / (2 x 51) = 1.96x
    r.add("transitions", "pf_user", ENV_HOSPES, "ns", [150000])                    # 150 / (63 + 51) = 1.32x
    r.add("transitions", "trap_bounce", ENV_HOSPES, "ns", [216000])                # 216 / (63 + 45) = 2x
    r.add("os", "os_clock_gettime", ENV_NATIVE, "ns", [20, 20])
    r.add("os", "os_clock_gettime", ENV_HOSPES, "ns", [50, 70])                   # 3x: met (at most)
    r.add("boot", "userspace", ENV_HOSPES, "s", [5.0])
    r.add("boot", "userspace", ENV_TCG, "s", [4.0])
    r.add_exit_run("boot", {"hypercall:1": 30000, "writer": 40000, "upcall": 9000, "sregs_switch": 5000})
    r.add_exit_run("boot", {"hypercall:1": 40000, "writer": 50000, "upcall": 9000})
    r.add_exit_run("boot", {"hypercall:1": 50000, "writer": 60000})
    r.add("devices", "blk_qd1_rand_read", ENV_HOSPES, "ns", [1_000_000])          # 1000 IOPS
    r.add("devices", "blk_qd16_rand_read", ENV_HOSPES, "ns", [200_000])           # 5000 IOPS
    r.add("devices", "blk_qd16_rand_read", ENV_NATIVE, "ns", [10_000])            # native: not the goal's
    return r


def test_reference_sums_floor_medians():
    from hospesbench.report import HOSPES_TRANSITIONS, reference_ns, reference_text

    r = floor_results()
    refs = {name: ref for name, _, ref in HOSPES_TRANSITIONS}
    assert reference_text(refs["user_syscall"]) == "2 x sregs"
    assert reference_text(refs["pf_user"]) == "trap_sregs + sregs"
    assert reference_ns(r, refs["user_syscall"]) == 2 * 51000
    assert reference_ns(r, refs["trap_bounce"]) == 63000 + 45000
    assert reference_ns(Results(), refs["hypercall_null"]) is None
    lines = render_markdown(r).splitlines()
    row = next(ln for ln in lines if ln.startswith("| user-mode `syscall`"))
    assert row.split(" | ")[3:6] == ["2 x sregs", "102", "1.96x"]
    row = next(ln for ln in lines if ln.startswith("| `int3` bounced"))
    assert row.split(" | ")[3:6] == ["trap_sregs + syscall", "108", "2.00x"]
    # every C floor has its row, and the derived costs are differences of medians
    assert sum(ln.startswith("| `") and "`: " in ln for ln in lines) == 8
    assert any("an sregs switch 6.00 us (sregs - syscall)" in ln and "`cpuid` 52.5% of a plain exit" in ln
               for ln in lines)


def test_every_floor_is_a_mode_of_kvm_exit():
    import re

    from hospesbench.report import FLOORS

    source = (ROOT / "bench" / "c" / "kvm_exit.c").read_text()
    names = re.search(r"mode_names\[\] = \{(.*?)\};", source, re.S)
    assert names is not None
    assert re.findall(r'"(\w+)"', names.group(1)) == [mode for mode, _ in FLOORS]


def test_goals_met_and_not_met():
    from hospesbench.report import boot_exit_totals, block_qd_iops, goals

    r = floor_results()
    assert boot_exit_totals(r) == [70000, 90000, 110000]      # exits and writer runs, not upcalls/sregs
    assert block_qd_iops(r) == {1: pytest.approx(1000.0), 16: pytest.approx(5000.0)}
    g = {x.goal.split(" <=")[0].split(" (")[0]: x for x in goals(r)}
    assert g["Null hypercall"].met is True and g["Null hypercall"].ratio == pytest.approx(53000 / 45000)
    assert g["User syscall round trip"].met is False
    assert g["User syscall round trip"].ratio == pytest.approx(200000 / 102000)
    assert g["#PF bounce"].met is True
    assert g["`HYPERVISOR_iret`"].met is None and g["`HYPERVISOR_iret`"].ratio is None
    assert g["`clock_gettime` in guest user space"].met is True
    assert g["Busybox boot to userspace"].met is False
    assert g["Busybox boot to userspace"].ratio == pytest.approx(1.25)
    exits = g["Exits + writer runs per busybox boot"]
    assert exits.met is False and exits.ratio == pytest.approx(90000 / 160000)
    blk = next(x for x in goals(r) if x.goal.startswith("Block"))
    assert blk.met is True and blk.ratio == pytest.approx(5.0)
    md = render_markdown(r).splitlines()
    row = next(ln for ln in md if ln.startswith("| `HYPERVISOR_iret`"))
    assert row.endswith("| - | <= 1.50x | not measured |") and "Hospes `iret_kernel`" in row
    row = next(ln for ln in md if ln.startswith("| User syscall"))
    assert row.endswith("| 1.96x | <= 1.50x | **not met** |")
    row = next(ln for ln in md if ln.startswith("| Block"))
    assert row.endswith("| 5.00x | >= 4x | met |")


def test_goals_without_figures_say_not_measured():
    from hospesbench.report import goals

    assert all(g.met is None and g.ratio is None and g.measured.startswith("not measured") for g in goals(Results()))


def test_rootfs_section():
    r = Results()
    assert "the `rootfs` suite is not in the default set" in render_markdown(r)
    r.add("rootfs", "login", ENV_HOSPES, "s", [60.0, 80.0])
    r.status["rootfs/qemu-tcg"] = "no login prompt within 900 s"
    r.meta["rootfs_image"] = "/cache/disk.img"
    lines = render_markdown(r).splitlines()
    assert "| Hospes (`hospes run --bootloader pygrub`, xvda) | 60.0 / 70.0 [29%] | 2 |  |" in lines
    row = next(ln for ln in lines if ln.startswith("| QEMU TCG"))
    assert row.endswith("| - | 0 | no login prompt within 900 s |")
    r.status.clear()
    r.add("rootfs", "login", ENV_TCG, "s", [20.0])
    assert "Hospes / QEMU TCG: 3.50x." in render_markdown(r)


def test_qemu_rootfs_cmdline():
    from hospesbench.suites import qemu_rootfs_cmdline

    grub = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-57-cloud-amd64 root=/dev/xvda ro console=hvc0 quiet"
    assert qemu_rootfs_cmdline(grub, 2100000) == "root=/dev/vda console=ttyS0 ro quiet tsc_early_khz=2100000 tsc=reliable"
    assert qemu_rootfs_cmdline(grub, None) == "root=/dev/vda console=ttyS0 ro quiet "


def test_default_suites_leave_rootfs_out():
    from hospesbench.suites import DEFAULT_SUITES, SUITES

    assert "rootfs" in SUITES and "rootfs" not in DEFAULT_SUITES
    assert DEFAULT_SUITES[:2] == ["floor", "boot"]


def test_marker_without_newline_is_seen_while_the_process_runs():
    from hospesbench.runner import Proc

    proc = Proc(["sh", "-c", "printf 'Debian 12\\r\\ndebian login: '; sleep 60"], markers=[" login: "])
    try:
        assert proc.wait_mark(" login: ", 30) is not None
        assert proc.popen.poll() is None            # seen before any newline or exit
    finally:
        proc.stop()
    res = proc.finish(10)
    assert res.stdout.endswith("debian login: ")


def test_boot_cpu_split_stays_out_of_the_exit_tables_and_sets_guest_and_kvm_against_tcg():
    from hospesbench.report import boot_cpu_split, boot_exit_totals

    r = sample_results()
    r.exit_runs["boot"] = [
        {"writer": 100, "hypercall:1": 50, "cpu:guest_ms": 2700, "cpu:kvm_ms": 1100, "cpu:hospes_ms": 1300},
        {"writer": 110, "hypercall:1": 50, "cpu:guest_ms": 2900, "cpu:kvm_ms": 1300, "cpu:hospes_ms": 1100},
    ]
    assert boot_cpu_split(r) == {"cpu:guest_ms": 2.8, "cpu:kvm_ms": 1.2, "cpu:hospes_ms": 1.2}
    assert boot_exit_totals(r) == [150, 160]          # times are not exits
    lines = render_markdown(r).splitlines()
    assert not any("cpu:" in ln and ln.startswith("| `cpu:") for ln in lines)
    text = next(ln for ln in lines if ln.startswith("Where a Hospes boot's vCPU time goes"))
    assert "guest mode 2.80 s" in text and "KVM's exit handling) 1.20 s" in text and "ioctls) 1.20 s" in text
    # guest + KVM 4.0 s against TCG's poweroff median 3.55 s
    assert "is 4.00 s: 1.13x QEMU TCG's whole run to poweroff (3.55 s)" in text
    # runs without the times (an older Hospes) give no sentence
    r.exit_runs["boot"] = [{"writer": 100}]
    assert boot_cpu_split(r) is None
    assert not any(ln.startswith("Where a Hospes boot") for ln in render_markdown(r).splitlines())
