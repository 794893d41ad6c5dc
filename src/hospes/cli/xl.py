"""The xl-compatible commands of ``hospes`` (create, list, console, shutdown, ...), as a table.

Every command talks to hospesd through :mod:`hospes.toolstack.client` (starting
the daemon on demand). Which daemon: ``$HOSPES_URL`` (+ ``$HOSPES_API_TOKEN``)
for TCP, else the Unix socket in ``$HOSPES_RUN_DIR`` (default /run/hospes).

Output that scripts parse uses xl's formats (:mod:`hospes.toolstack.xlfmt`);
messages xl writes to stderr go to stderr here too. Domain-0 is the host: it has
a line in ``list``/``vcpu-list``/``uptime`` as in xl, and refuses lifecycle commands.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

import click

from hospes.errors import HospesError

DOM0_IDS = ("0", "Domain-0")


def connect() -> Any:
    """The client the commands use (tests replace this function)."""
    from hospes.toolstack.client import connect as _connect

    url = os.environ.get("HOSPES_URL")
    return _connect(url=url, token=os.environ.get("HOSPES_API_TOKEN")) if url else _connect()


def _not_dom0(ident: str, action: str) -> None:
    if ident in DOM0_IDS:
        raise HospesError(f"Domain-0 is the host itself; it cannot {action}.")


def _live(state: str) -> bool:
    """Whether an API ``state`` is one of a domain that exists (building, running, paused)."""
    from hospes.toolstack.lifecycle import LIVE_STATES, DomainState

    try:
        return DomainState(state) in LIVE_STATES
    except ValueError:
        return False


def _fail(message: str, code: int = 1) -> None:
    click.echo(message, err=True)
    sys.exit(code)


# --- commands -------------------------------------------------------------------------------


def cmd_create(config: str, overrides: tuple[str, ...], console: bool, paused: bool, dryrun: bool,
               quiet: bool) -> None:
    from hospes.toolstack.client import Hospes

    if not quiet:
        click.echo(f"Parsing config from {config}", err=True)
    spec = Hospes.load_config(config, overrides)
    for w in spec.warnings:
        click.echo(f"WARNING: {w}", err=True)
    if dryrun:
        click.echo(json.dumps(spec.to_dict(), indent=4, sort_keys=True))
        return
    h = connect()
    info = h.transport.request("POST", "/v1/domains", {"spec": spec.to_dict(), "paused": paused})
    if console:
        from hospes.toolstack.console_client import attach

        attach(h.transport, str(info["domid"]))


def cmd_list(long: bool, domains: tuple[str, ...]) -> None:
    from hospes.toolstack import xlfmt

    h = connect()
    if domains:
        want_dom0 = any(d in DOM0_IDS for d in domains)
        doms = [h.domain(d).info for d in domains if d not in DOM0_IDS]
    else:
        want_dom0 = True
        doms = [d.info for d in h.domains()]
    if long:
        click.echo(json.dumps(xlfmt.list_long(doms), indent=4))
        return
    host = h.host() if want_dom0 else {}
    click.echo(xlfmt.format_list(host, doms, dom0=want_dom0), nl=False)
    for d in doms:   # why a domain stopped (e.g. it rebooted too fast): on stderr, as xl's notes are
        if d.get("state") in ("shutdown", "crashed") and d.get("message"):
            click.echo(f"{d.get('name')} ({d.get('domid')}): {str(d['message'])[:300]}", err=True)


def cmd_console(domain: str) -> None:
    from hospes.toolstack.console_client import attach

    _not_dom0(domain, "have its console attached here")
    h = connect()
    d = h.domain(domain)
    attach(h.transport, str(d.domid))


def _shutdown_or_reboot(reboot: bool, wait: bool, all_: bool, domains: tuple[str, ...]) -> None:
    h = connect()
    if all_:
        targets = [d for d in h.domains() if _live(d.state)]
    elif domains:
        for ident in domains:
            _not_dom0(ident, "be shut down or rebooted")
        targets = [h.domain(ident) for ident in domains]
    else:
        _fail("You must specify -a or a domain id.\n")
        return
    for d in targets:
        click.echo(f"{'Rebooting' if reboot else 'Shutting down'} domain {d.domid}", err=True)
        if not wait:
            (d.reboot if reboot else d.shutdown)(wait=False)
    if not wait:
        return
    from hospes.toolstack.lifecycle import WaitOutcome, reason_code

    click.echo(f"Waiting for {len(targets)} domains", err=True)
    for d in targets:
        r = (d.reboot if reboot else d.shutdown)(wait=True)
        if r["outcome"] == WaitOutcome.DESTROYED:
            click.echo(f"Domain {d.domid} has been destroyed", err=True)
        else:
            code = reason_code(r.get("shutdown_reason"))
            click.echo(f"Domain {d.domid} has been shut down, reason code {code}", err=True)


def cmd_shutdown(wait: bool, all_: bool, domains: tuple[str, ...]) -> None:
    _shutdown_or_reboot(False, wait, all_, domains)


def cmd_reboot(wait: bool, all_: bool, domains: tuple[str, ...]) -> None:
    _shutdown_or_reboot(True, wait, all_, domains)


def cmd_destroy(force: bool, domain: str) -> None:
    if domain in DOM0_IDS:
        _fail("Not destroying domain 0; use -f to force.\n"
              "This can only be done when using a disaggregated hardware domain and toolstack.\n")
    connect().domain(domain).destroy()


def cmd_pause(domain: str) -> None:
    _not_dom0(domain, "be paused")
    connect().domain(domain).pause()


def cmd_unpause(domain: str) -> None:
    _not_dom0(domain, "be unpaused")
    connect().domain(domain).unpause()


def cmd_rename(domain: str, new_name: str) -> None:
    _not_dom0(domain, "be renamed")
    connect().domain(domain).rename(new_name)


def cmd_domid(name: str) -> None:
    if name == "Domain-0":
        click.echo("0")
        return
    from hospes.toolstack.client import HospesApiError

    try:
        d = connect().domain(name) if not name.isdigit() else None
    except HospesApiError as e:
        if e.status != 404:
            raise
        d = None
    if d is None:
        _fail(f"Can't get domid of domain name '{name}', maybe this domain does not exist.")
        return
    click.echo(str(d.domid))


def cmd_domname(domid: str) -> None:
    if not domid.isdigit():
        _fail("Invalid domain id.\n")
    if int(domid) == 0:
        click.echo("Domain-0")
        return
    from hospes.toolstack.client import HospesApiError

    try:
        d = connect().domain(int(domid))
    except HospesApiError as e:
        if e.status != 404:
            raise
        _fail(f"Can't get domain name of domain id '{int(domid)}', maybe this domain does not exist.")
        return
    click.echo(d.name)


def cmd_info(name: str | None) -> None:
    from hospes.toolstack import xlfmt

    click.echo(xlfmt.format_info(connect().host(), only=name), nl=False)


def cmd_vcpu_list(domains: tuple[str, ...]) -> None:
    from hospes.toolstack import xlfmt

    h = connect()
    want_dom0 = not domains or any(d in DOM0_IDS for d in domains)
    idents = [d for d in domains if d not in DOM0_IDS] if domains else [str(d.domid) for d in h.domains()]
    lists = [h.transport.request("GET", f"/v1/domains/{urllib.parse.quote(i, safe='')}/vcpus") for i in idents]
    click.echo(xlfmt.format_vcpu_list(h.host(), lists, dom0=want_dom0), nl=False)


def cmd_vcpu_set(domain: str, count: int) -> None:
    """xl vcpu-set: the guest runs COUNT of its vCPUs (up to its maxvcpus)."""
    _not_dom0(domain, "have its vCPUs set here")
    connect().domain(domain).set_vcpus(count)


def cmd_mem_set(domain: str, size: str) -> None:
    """xl mem-set: the memory the guest should hold (SIZE as xl: 512m, 1g, 131072k; no suffix: MiB)."""
    _not_dom0(domain, "have its memory set here")
    from hospes.toolstack.spec import parse_mem_size_kb

    parse_mem_size_kb(size)   # a bad size is refused before anything is asked
    connect().domain(domain).set_memory(size)


def cmd_sched_credit(domain: str | None, weight: int | None, cap: int | None, schedparam: bool,
                     cpupool: str | None) -> None:
    """xl sched-credit: list weights and caps, or set them for one domain (-d DOM -w W -c C)."""
    from hospes.toolstack import xlfmt

    if cpupool not in (None, "Pool-0"):
        raise HospesError(f"unknown cpupool '{cpupool}'")
    if (cpupool or schedparam) and (domain or weight is not None or cap is not None):
        raise HospesError("Specifying a cpupool or schedparam is not allowed with domain options.")
    if domain is None and (weight is not None or cap is not None):
        raise HospesError("Must specify a domain.")
    if schedparam:
        click.echo(xlfmt.POOL_LINE)
        return
    h = connect()
    if domain is None:
        rows = [h.domain(str(d.domid)).sched() for d in h.domains() if _live(d.state)]
        click.echo(xlfmt.format_sched_credit(rows), nl=False)
        return
    if domain in DOM0_IDS:
        if weight is not None or cap is not None:
            raise HospesError("Domain-0 is the host itself; its CPU share is not Hospes' to set.")
        click.echo(xlfmt.format_sched_credit([], pool=False), nl=False)
        return
    d = h.domain(domain)
    if weight is None and cap is None:
        click.echo(xlfmt.format_sched_credit([d.sched()], pool=False, dom0=False), nl=False)
    else:
        d.set_sched(weight=weight, cap=cap)


def cmd_uptime(short: bool, domains: tuple[str, ...]) -> None:
    from hospes.toolstack import xlfmt

    h = connect()
    want_dom0 = not domains or any(d in DOM0_IDS for d in domains)
    doms = ([h.domain(d).info for d in domains if d not in DOM0_IDS] if domains
            else [d.info for d in h.domains() if _live(d.state)])
    click.echo(xlfmt.format_uptime(h.host(), doms, short=short, dom0=want_dom0), nl=False)


def cmd_log(follow: bool, tail: int | None, domain: str) -> None:
    _not_dom0(domain, "show a console log")
    d = connect().domain(domain)
    data = d.console_log_bytes(tail=tail)
    out = sys.stdout.buffer
    out.write(data)
    out.flush()
    offset = len(data) if tail is None else None
    if not follow:
        return
    if offset is None:
        offset = len(d.console_log_bytes())
    from hospes.toolstack.client import HospesApiError

    try:
        while True:
            time.sleep(0.5)
            try:
                more = d.console_log_bytes(offset=offset)
            except HospesApiError as e:
                if e.status == 404:
                    return
                raise
            if more:
                out.write(more)
                out.flush()
                offset += len(more)
    except KeyboardInterrupt:
        pass


def cmd_exec(timeout: float, domain: str, command: tuple[str, ...]) -> None:
    import shlex

    _not_dom0(domain, "run commands through hospes")
    r = connect().domain(domain).run(" ".join(shlex.quote(c) for c in command) if len(command) > 1 else command[0],
                                     timeout=timeout)
    sys.stdout.write(r.output)
    sys.stdout.flush()
    sys.exit(r.exit_status)


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    callback: Callable[..., None]
    help: str
    params: tuple[click.Parameter, ...] = ()
    context: dict[str, Any] | None = None


def _domain() -> click.Argument:
    return click.Argument(["domain"])


def _domains() -> click.Argument:
    return click.Argument(["domains"], nargs=-1)


def _wait() -> click.Option:
    return click.Option(["-w", "--wait", "wait"], is_flag=True, help="Wait for the domain(s) to stop.")


def _all() -> click.Option:
    return click.Option(["-a", "--all", "all_"], is_flag=True, help="All domains.")


COMMANDS: tuple[Command, ...] = (
    Command("create", cmd_create, "Create a domain from an xl config file; KEY=VALUE lines override it.", (
        click.Argument(["config"]),
        click.Argument(["overrides"], nargs=-1),
        click.Option(["-c", "console"], is_flag=True, help="Attach to the console after creating."),
        click.Option(["-p", "paused"], is_flag=True, help="Leave the domain paused after creating."),
        click.Option(["-n", "--dryrun", "dryrun"], is_flag=True,
                     help="Print the parsed configuration (JSON), create nothing."),
        click.Option(["-q", "--quiet", "quiet"], is_flag=True, help="Do not print 'Parsing config from'."),
    )),
    Command("list", cmd_list, "List domains (Domain-0 is the host); -l for JSON.", (
        click.Option(["-l", "--long", "long"], is_flag=True, help="Configuration and state as JSON."),
        _domains(),
    )),
    Command("console", cmd_console, "Attach to a domain's console; Ctrl-] detaches.", (_domain(),)),
    Command("shutdown", cmd_shutdown, "Ask domains to power off (-w: wait until they did).",
            (_wait(), _all(), _domains())),
    Command("reboot", cmd_reboot, "Ask domains to reboot (-w: wait until they did).", (_wait(), _all(), _domains())),
    Command("destroy", cmd_destroy, "Stop a domain at once and remove it.", (
        click.Option(["-f", "force"], is_flag=True, help="Accepted for xl compatibility."), _domain())),
    Command("pause", cmd_pause, "Pause a domain.", (_domain(),)),
    Command("unpause", cmd_unpause, "Unpause a domain.", (_domain(),)),
    Command("rename", cmd_rename, "Rename a domain.", (_domain(), click.Argument(["new_name"]))),
    Command("domid", cmd_domid, "Print the domid of a domain name.", (click.Argument(["name"]),)),
    Command("domname", cmd_domname, "Print the name of a domid.", (click.Argument(["domid"]),)),
    Command("info", cmd_info, "Facts about the host, as xl info prints them.", (
        click.Argument(["name"], required=False),)),
    Command("vcpu-list", cmd_vcpu_list, "List the vCPUs of domains.", (_domains(),)),
    Command("vcpu-set", cmd_vcpu_set, "Set how many vCPUs a domain runs (up to its maxvcpus).", (
        _domain(), click.Argument(["count"], type=click.IntRange(1, 32)))),
    Command("mem-set", cmd_mem_set,
            "Set the memory a domain should hold, up to its maxmem (SIZE: 512m, 1g, ...; no suffix: MiB).", (
        _domain(), click.Argument(["size"]))),
    Command("sched-credit", cmd_sched_credit,
            "Show or set domains' CPU weight and cap (the credit scheduler's parameters, on cgroups).", (
        click.Option(["-d", "--domain", "domain"], default=None, help="The domain to show or change."),
        click.Option(["-w", "--weight", "weight"], type=click.IntRange(1, 65535), default=None,
                     help="Relative CPU share (default 256)."),
        click.Option(["-c", "--cap", "cap"], type=click.IntRange(0, 65535), default=None,
                     help="Limit in percent of one host CPU; 0 = none."),
        click.Option(["-s", "--schedparam", "schedparam"], is_flag=True, help="Show the pool's scheduler."),
        click.Option(["-p", "--cpupool", "cpupool"], default=None, help="Only Pool-0 exists."),
    )),
    Command("uptime", cmd_uptime, "Print the uptime of domains (-s: short).", (
        click.Option(["-s", "short"], is_flag=True, help="uptime(1)-like lines."), _domains())),
    Command("log", cmd_log, "Print a domain's console log (-f: keep following it).", (
        click.Option(["-f", "--follow", "follow"], is_flag=True, help="Keep printing new output."),
        click.Option(["-n", "--tail", "tail"], type=click.IntRange(min=1), default=None, help="Only the last N bytes."),
        _domain())),
    Command("exec", cmd_exec, "Run a command in a domain through its console shell; exit with its status.", (
        click.Option(["-t", "--timeout", "timeout"], type=float, default=60.0, show_default=True),
        _domain(), click.Argument(["command"], nargs=-1, required=True)),
        {"ignore_unknown_options": True}),
)


def register(group: click.Group) -> None:
    from hospes.cli import migrate

    for c in COMMANDS + migrate.COMMANDS:
        group.add_command(click.Command(c.name, callback=c.callback, params=list(c.params), help=c.help,
                                        context_settings=c.context or {}))
