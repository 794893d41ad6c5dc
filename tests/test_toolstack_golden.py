"""Golden output of `hospes list`, `info`, `vcpu-list` and `uptime` against a fake registry.

The expected texts are xl's formats (tools/xl/xl_info.c, xl_vcpu.c). Each table is
also checked against xl's own printf format strings, applied with Python's %
operator (which follows C's printf for these conversions), so the goldens cannot
drift from xl by a typo in both places.
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from hospes.toolstack import xlfmt
from toolstack_golden_data import DOMAINS, HOST, VCPUS

LIST_GOLDEN = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    "Domain-0                                     0 23640     2     r-----    1342.4\n"
    "web                                          1   256     1     -b----       9.7\n"
    "db                                           2     0     0     ---sc-      12.1\n"
    "a-domain-name-of-exactly-forty-chars-xyz     3   256     1     --p---       0.0\n"
    "busy                                        12   128     1     r-----  123456.8\n"
)

VCPU_LIST_GOLDEN = (
    "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n"
    "Domain-0                             0     0    0   r--     624.0  all / all\n"
    "Domain-0                             0     1    1   r--     742.7  all / all\n"
    "web                                  1     0    1   -b-       9.7  all / all\n"
    "db                                   2     0    -   --p       0.0  all / all\n"
    "a-domain-name-of-exactly-forty-chars-xyz     3     0    1   ---       0.0  all / all\n"
    "busy                                12     0    0   r--  123456.8  all / all\n"
    "busy                                12     1    -   --p       0.0  all / all\n"
)

INFO_GOLDEN = (
    "host                   : node1\n"
    "release                : 6.1.0-13-amd64\n"
    "version                : #1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1 (2023-09-29)\n"
    "machine                : x86_64\n"
    "nr_cpus                : 2\n"
    "max_cpu_id             : 1\n"
    "nr_nodes               : 1\n"
    "cores_per_socket       : 2\n"
    "threads_per_core       : 1\n"
    "cpu_mhz                : 2100.000\n"
    "virt_caps              : pv\n"
    "total_memory           : 24152\n"
    "free_memory            : 23020\n"
    "sharing_freed_memory   : 0\n"
    "sharing_used_memory    : 0\n"
    "outstanding_claims     : 0\n"
    "free_cpus              : 0\n"
    "xen_major              : 0\n"
    "xen_minor              : 1\n"
    "xen_extra              : .0\n"
    "xen_version            : 0.1.0\n"
    "xen_caps               : xen-3.0-x86_64\n"
    "xen_scheduler          : linux\n"
    "xen_pagesize           : 4096\n"
    "platform_params        : virt_start=0xffff800000000000\n"
    "xen_changeset          : hospes 0.1.0, Xen PV ABI 4.17.0\n"
    "xen_commandline        : \n"
    "cc_compiler            : CPython 3.11.7\n"
    "cc_compile_by          : hospes\n"
    "cc_compile_domain      : \n"
    "cc_compile_date        : \n"
    "build_id               : \n"
    "xend_config_format     : 4\n"
)

UPTIME_GOLDEN = (
    "Name                                ID Uptime\n"
    "Domain-0                             0 1 day,  2:03:04\n"
    "web                                  1  0:00:14\n"
    "db                                   2 1 day,  0:00:00\n"
    "a-domain-name-of-exactly-forty-chars-xyz    3  0:16:40\n"
    "busy                                12 3 days,  0:00:00\n"
)

UPTIME_SHORT_GOLDEN = (
    " 22:13:20 up 1 day,  2:03, Domain-0 (0)\n"
    " 22:13:20 up  0:00, web (1)\n"
    " 22:13:20 up 1 day,  0:00, db (2)\n"
    " 22:13:20 up  0:16, a-domain-name-of-exactly-forty-chars-xyz (3)\n"
    " 22:13:20 up 3 days,  0:00, busy (12)\n"
)

NOW = 1700000000.0  # 2023-11-14 22:13:20 UTC


# --- the formatters ----------------------------------------------------------------------------


def test_list_golden() -> None:
    assert xlfmt.format_list(HOST, DOMAINS) == LIST_GOLDEN


def test_list_rows_follow_xl_printf() -> None:
    lines = xlfmt.format_list(HOST, DOMAINS).splitlines()
    assert lines[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    rows = [("Domain-0", 0, 23640, 2, "r-----", 1342.44)] + [
        (d["name"], d["domid"], d["memory_mib"], d["vcpus"], d["flags"], d["cpu_time"])
        for d in sorted(DOMAINS, key=lambda d: d["domid"])]
    for line, (name, domid, mem, vcpus, flags, t) in zip(lines[1:], rows, strict=True):
        assert line == "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f" % (name, domid, mem, vcpus, *flags, t)


def test_list_without_dom0_and_state_letters() -> None:
    out = xlfmt.format_list(HOST, DOMAINS[1:2], dom0=False)
    assert out.splitlines()[1:] == ["web                                          1   256     1     -b----       9.7"]


def test_vcpu_list_golden() -> None:
    assert xlfmt.format_vcpu_list(HOST, VCPUS) == VCPU_LIST_GOLDEN


def test_vcpu_list_follows_xl_printf() -> None:
    lines = xlfmt.format_vcpu_list(HOST, VCPUS).splitlines()
    assert lines[0] == "%-32s %5s %5s %5s %5s %9s %s" % ("Name", "ID", "VCPU", "CPU", "State", "Time(s)",
                                                         "Affinity (Hard / Soft)")
    assert lines[3] == ("%-32s %5u %5u" % ("web", 1, 0)) + ("%5u %3c%c- " % (1, "-", "b")) + \
        ("%9.1f  " % 9.73) + "all / all"
    assert lines[7] == ("%-32s %5u %5u" % ("busy", 12, 1)) + ("%5c %3c%cp " % ("-", "-", "-")) + \
        ("%9.1f  " % 0.0) + "all / all"


def test_info_golden() -> None:
    assert xlfmt.format_info(HOST) == INFO_GOLDEN
    for line in INFO_GOLDEN.splitlines():
        key, value = line[:23].rstrip(), line[25:]
        assert line == "%-23s: %s" % (key, value)


def test_info_one_field_prints_just_the_value() -> None:
    assert xlfmt.format_info(HOST, only="total_memory") == "24152\n"
    assert xlfmt.format_info(HOST, only="xen_version") == "0.1.0\n"


def test_uptime_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert xlfmt.format_uptime(HOST, DOMAINS, now=NOW) == UPTIME_GOLDEN
        assert UPTIME_GOLDEN.splitlines()[0] == "%-33s %4s %s" % ("Name", "ID", "Uptime")
        assert UPTIME_GOLDEN.splitlines()[2] == "%-33s %4d %s" % ("web", 1, " 0:00:14")
        assert xlfmt.format_uptime(HOST, DOMAINS, short=True, now=NOW) == UPTIME_SHORT_GOLDEN
    finally:
        monkeypatch.undo()
        time.tzset()


def test_list_long_is_xl_shaped_json() -> None:
    out = xlfmt.list_long(DOMAINS)
    assert [d["domid"] for d in out] == [1, 2, 3, 12]
    web = out[0]
    assert web["config"]["c_info"] == {"type": "pv", "name": "web", "uuid": DOMAINS[1]["uuid"]}
    assert web["config"]["b_info"]["target_memkb"] == 256 * 1024
    assert web["config"]["on_reboot"] == "restart"
    assert web["hospes"]["state"] == "running"
    json.dumps(out)


# --- the CLI over a fake registry ----------------------------------------------------------------


class _FakeDomain:
    def __init__(self, info: dict) -> None:
        self.info = info
        self.domid = info["domid"]
        self.name = info["name"]
        self.state = info["state"]


class _FakeTransport:
    def request(self, method: str, path: str, body=None, **kw):
        assert method == "GET" and path.endswith("/vcpus"), path
        ident = path.split("/")[3]
        for vl in VCPUS:
            if ident in (str(vl["domid"]), vl["name"]):
                return vl
        raise AssertionError(f"no vCPUs for {ident}")


class FakeHospes:
    """What the CLI needs from hospes.toolstack.client.Hospes, from fixed data."""

    transport = _FakeTransport()

    def host(self) -> dict:
        return HOST

    def domains(self) -> list[_FakeDomain]:
        return [_FakeDomain(d) for d in DOMAINS]

    def domain(self, ident) -> _FakeDomain:
        from hospes.toolstack.client import HospesApiError

        for d in DOMAINS:
            if str(ident) in (str(d["domid"]), d["name"]):
                return _FakeDomain(d)
        raise HospesApiError(404, f"Domain {ident!r} does not exist")


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch):
    from hospes import cli as climod
    from hospes.cli import xl

    monkeypatch.setattr(xl, "connect", lambda: FakeHospes())
    climod._register()
    runner = CliRunner(mix_stderr=False)

    def invoke(*args: str):
        return runner.invoke(climod.cli, list(args), catch_exceptions=False)

    return invoke


def test_cli_list(cli) -> None:
    r = cli("list")
    assert r.exit_code == 0
    assert r.stdout == LIST_GOLDEN


def test_cli_list_one_domain_has_no_domain0(cli) -> None:
    r = cli("list", "web")
    assert r.stdout.splitlines() == LIST_GOLDEN.splitlines()[0:1] + LIST_GOLDEN.splitlines()[2:3]


def test_cli_list_long(cli) -> None:
    r = cli("list", "-l")
    assert json.loads(r.stdout) == json.loads(json.dumps(xlfmt.list_long(DOMAINS)))


def test_cli_info(cli) -> None:
    assert cli("info").stdout == INFO_GOLDEN
    assert cli("info", "free_memory").stdout == "23020\n"


def test_cli_vcpu_list(cli) -> None:
    assert cli("vcpu-list").stdout == VCPU_LIST_GOLDEN
    assert cli("vcpu-list", "web").stdout.splitlines() == [VCPU_LIST_GOLDEN.splitlines()[i] for i in (0, 3)]
    assert cli("vcpu-list", "0", "busy").stdout.splitlines() == [
        VCPU_LIST_GOLDEN.splitlines()[i] for i in (0, 1, 2, 6, 7)]


def test_cli_domid_and_domname(cli) -> None:
    assert cli("domid", "web").stdout == "1\n"
    assert cli("domid", "Domain-0").stdout == "0\n"
    assert cli("domname", "12").stdout == "busy\n"
    assert cli("domname", "0").stdout == "Domain-0\n"
    r = cli("domid", "nosuch")
    assert r.exit_code == 1
    assert r.stderr == "Can't get domid of domain name 'nosuch', maybe this domain does not exist.\n"
    r = cli("domname", "77")
    assert r.exit_code == 1
    assert "maybe this domain does not exist" in r.stderr


def test_cli_refuses_lifecycle_on_domain0(cli) -> None:
    r = cli("destroy", "0")
    assert r.exit_code == 1
    assert r.stderr.startswith("Not destroying domain 0; use -f to force.")
