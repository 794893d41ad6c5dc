"""``hospes run``: boot one domain in the foreground, console on the terminal.

The flags become a DomainSpec (:mod:`hospes.toolstack.run_spec`, the xl.cfg
grammar), the spec a DomainConfig (:mod:`hospes.toolstack.domain_config`), and the
domain runs through :class:`hospes.toolstack.runner.DomainRunner`, as in the
daemon's domain processes; what is left here is the terminal and the exit status.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from hospes.errors import HospesError
from hospes.toolstack.run_spec import RUN_MEMORY_MIB

if TYPE_CHECKING:
    from hospes.cgroup import CpuControl
    from hospes.domain import ShutdownResult
    from hospes.toolstack.spec import DomainSpec

EXIT_MARK = re.compile(rb"hospes-exit-status=(\d+)")
RUN_DOMID = 1
# Exit statuses README documents (a command's own status passes through).
EXIT_CRASHED = 3
EXIT_NO_STATUS = 4
EXIT_DESTROYED = 5


class _ConsoleSink:
    """Writes guest output to stdout and remembers what init reports."""

    def __init__(self) -> None:
        self.tail = b""
        self.exit_status: int | None = None
        self.first_userspace: float | None = None
        self.t0 = time.monotonic()

    def __call__(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        self.tail = (self.tail + data)[-4096:]
        if self.first_userspace is None and b"hospes: userspace up" in self.tail:
            self.first_userspace = time.monotonic() - self.t0
        m = EXIT_MARK.search(self.tail)
        if m:
            self.exit_status = int(m.group(1))


class _TerminalInput:
    """Console input from stdin: raw mode on a terminal (Ctrl-] quits), plain reads on a pipe."""

    QUIT = b"\x1d"

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin is not None else -1
        self.saved: list[Any] | None = None
        self.eof = False
        self.on_quit: Callable[[], None] = lambda: None

    def __enter__(self) -> "_TerminalInput | None":
        if self.fd < 0:
            return None
        try:
            os.fstat(self.fd)
        except OSError:
            return None
        if os.isatty(self.fd):
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        os.set_blocking(self.fd, False)
        return self

    def pump(self, sink: Callable[[bytes], None]) -> Callable[[], None]:
        """Feed stdin to ``sink`` from a thread of its own; return what stops it.

        The thread sleeps in select() on stdin and a wake-up pipe, so it costs
        nothing while nobody types.
        """
        import select
        import threading

        stop_r, stop_w = os.pipe()

        def pump() -> None:
            while not self.eof:
                ready, _, _ = select.select([self.fd, stop_r], [], [])
                if stop_r in ready:
                    return
                data = self.read()
                if data:
                    sink(data)

        thread = threading.Thread(target=pump, name="console-input", daemon=True)
        thread.start()

        def stop() -> None:
            os.write(stop_w, b"x")
            thread.join()
            os.close(stop_w)
            os.close(stop_r)

        return stop

    def read(self) -> bytes | None:
        """What stdin holds now: b"" for nothing yet, None at its end (or Ctrl-] on a terminal)."""
        if self.eof:
            return None
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return None
        if self.saved is not None and self.QUIT in data:
            self.eof = True
            self.on_quit()
            return None
        return data.replace(b"\n", b"\r") if self.saved is None else data

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            try:
                os.set_blocking(self.fd, True)
            except OSError:
                pass
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def register(group: click.Group) -> None:
    @group.command("run", context_settings={"ignore_unknown_options": False})
    @click.option("--kernel", type=click.Path(path_type=Path),
                  help="PV kernel (bzImage or ELF); default: Debian's cloud kernel.")
    @click.option("--ramdisk", type=click.Path(path_type=Path),
                  help="Initrd; default: Hospes' busybox initramfs (only with the default kernel).")
    @click.option("--cmdline", default=None, help="Kernel command line.")
    @click.option("--memory", "memory", default=RUN_MEMORY_MIB, show_default=True, type=int, help="Memory in MiB.")
    @click.option("--vcpus", default=1, show_default=True, type=int, help="Number of vCPUs.")
    @click.option("--disk", "disks", multiple=True, metavar="SPEC",
                  help="A disk, as one entry of xl.cfg's disk=[...] (e.g. disk.img,raw,xvda,rw); "
                       "PATH[,ro] is short for the image PATH as xvda, xvdb, ... by position. Repeatable.")
    @click.option("--vif", "vifs", multiple=True, metavar="SPEC",
                  help="A network interface eth0, eth1, ..., as one entry of xl.cfg's vif=[...] "
                       "(mac=, bridge=, mtu=, rate= e.g. 10Mb/s@50ms, vifname= the host TAP device; tap= is "
                       "short for vifname=). Repeatable; default MAC 00:16:3e:.. from the domid, TAP "
                       "hospes<domid>.<n>; '' for all defaults.")
    @click.option("--on-reboot", type=click.Choice(["restart", "exit"]), default="restart", show_default=True,
                  help="What to do when the guest reboots.")
    @click.option("--cap", type=click.IntRange(0, 65535), default=0, show_default=True,
                  help="CPU limit in percent of one host CPU (xl's cap; 0 = none), via a cgroup.")
    @click.option("--weight", type=click.IntRange(1, 65535), default=256, show_default=True,
                  help="Relative CPU share against other domains (xl's cpu_weight), via a cgroup.")
    @click.option("--stats", is_flag=True, help="Print exit counts by kind when the guest stops.")
    @click.option("--bootloader", type=click.Choice(["pygrub"]), default=None,
                  help="Boot the kernel installed in the first --disk (its grub.cfg, else /vmlinuz), read "
                       "again at each reboot; --kernel/--ramdisk then name files in the disk, --cmdline is appended.")
    @click.option("--bootloader-arg", "bootloader_args", multiple=True, metavar="ARG",
                  help="A pygrub argument: --entry=N|TITLE, --kernel=PATH, --ramdisk=PATH, --args=TEXT. Repeatable.")
    @click.option("--no-jail", "no_jail", is_flag=True,
                  help="Run the domain as root with the host's files and every system call (debugging); "
                       "by default, as root, it runs jailed (docs/security.md).")
    @click.argument("command", nargs=-1)
    def run(kernel: Path | None, ramdisk: Path | None, cmdline: str | None, memory: int, vcpus: int,
            disks: tuple[str, ...], vifs: tuple[str, ...], on_reboot: str, cap: int, weight: int,
            stats: bool, bootloader: str | None, bootloader_args: tuple[str, ...], no_jail: bool,
            command: tuple[str, ...]) -> None:
        """Boot a domain; with `-- CMD ARGS...` run CMD in the guest and exit with its status."""
        from hospes.toolstack.run_spec import RunFlags, run_spec

        spec = run_spec(RunFlags(kernel=kernel, ramdisk=ramdisk, cmdline=cmdline, memory=memory, vcpus=vcpus,
                                 disks=disks, vifs=vifs, on_reboot=on_reboot, weight=weight, cap=cap,
                                 command=command, bootloader=bootloader, bootloader_args=bootloader_args))
        sys.exit(run_domain(spec, stats=stats, command=bool(command), jail=not no_jail))


def _print_stats(result: "ShutdownResult", sink: _ConsoleSink, cpu: "CpuControl") -> None:
    elapsed = time.monotonic() - sink.t0
    click.echo(f"\n[hospes] {result.reason} after {elapsed:.2f} s"
               + (f", first userspace line at {sink.first_userspace:.2f} s" if sink.first_userspace else ""),
               err=True)
    for key, n in sorted(result.stats.items(), key=lambda kv: -kv[1]):
        click.echo(f"[hospes]   {key:24} {n}", err=True)
    if cpu.cgroup is not None:
        t = cpu.throttled()
        ns = t.get("throttled_time", t.get("throttled_usec", 0) * 1000)
        click.echo(f"[hospes] cgroup {cpu.path}: throttled in {t.get('nr_throttled', 0)} of "
                   f"{t.get('nr_periods', 0)} periods, {ns / 1e9:.2f} s", err=True)


def _enter_jail(spec: "DomainSpec", config: Any, cpu: "CpuControl",
                log: Callable[[str], None]) -> tuple["DomainSpec", Any] | None:
    """Jail this process (as root; None otherwise) with what ``config`` names; return the
    spec and the config the jailed child builds (absolute paths, TAPs already on their bridges).

    With a bootloader the kernel and ramdisk are files inside the disk, which the child's
    pygrub reads again (the first boot's extracted copies stay outside the jail)."""
    import dataclasses

    from hospes.toolstack.domain_jail import ForegroundJail
    from hospes.toolstack.jail import can_jail

    if not can_jail():
        return None
    # Absolute paths: the jailed child looks its handed files up after a chdir("/").
    config = dataclasses.replace(
        config, kernel=config.kernel.absolute(), ramdisk=config.ramdisk.absolute() if config.ramdisk else None,
        disks=tuple(dataclasses.replace(d, path=d.path.absolute()) for d in config.disks))
    resolved = dataclasses.replace(
        spec, disks=tuple(dataclasses.replace(d, target=os.path.abspath(d.target)) if d.target else d
                          for d in spec.disks))
    if spec.bootloader is None:
        resolved = dataclasses.replace(resolved, kernel=str(config.kernel),
                                       ramdisk=str(config.ramdisk) if config.ramdisk else None)
    jail = ForegroundJail(resolved, RUN_DOMID, log, cpu.close)
    jail.prepare()
    jail.enter(lambda: None)
    return resolved, dataclasses.replace(config, vifs=tuple(dataclasses.replace(v, bridge=None) for v in config.vifs))


def run_domain(spec: "DomainSpec", *, stats: bool = False, command: bool = False, jail: bool = True) -> int:
    """Run ``spec`` in the foreground through its restarts; return ``hospes run``'s exit status.

    ``command``: the spec's command line carries a command whose exit status is the result.
    ``jail`` (and root): the domain runs in the jail hospesd's domain processes run in; this
    process forks, the parent waits and exits with the jailed child's status.
    """
    from hospes.cgroup import CpuControl, SchedParams
    from hospes.domain import Domain, ShutdownReason
    from hospes.toolstack.admission import host_total_mib
    from hospes.toolstack.boot_files import check_boot_files
    from hospes.toolstack.domain_config import domain_config
    from hospes.toolstack.runner import DomainRunner, RestartLimit, TerminationSignals

    def log(message: str) -> None:
        click.echo(message, err=True)

    def restarting(result: ShutdownResult) -> None:
        click.echo("\n[hospes] the guest rebooted; starting it again", err=True)

    total = host_total_mib()
    if total and spec.memory > total:
        raise HospesError(f"--memory {spec.memory} MiB is more than this host's {total} MiB of memory; ask for less.")
    check_boot_files(spec)   # regular files within their limits (a FIFO or /dev/zero is refused, not read)
    with CpuControl(RUN_DOMID) as cpu:
        cpu.start(SchedParams(weight=spec.cpu_weight, cap=spec.cap), eager=False)
        # Before the terminal goes raw: a first run prints the default images' build progress.
        config = domain_config(spec, RUN_DOMID, log)
        jailed = _enter_jail(spec, config, cpu, log) if jail else None
        if jailed is not None:
            spec, config = jailed
        # In the jail, pygrub runs again on the disk handed over: the first boot's extracted files stay outside.
        first = [] if jailed is not None and spec.bootloader is not None else [config]
        sink = _ConsoleSink()

        def build() -> Domain:
            # A bootloader reads the disk again at each boot: a kernel updated in the guest boots next.
            again = first.pop() if first else domain_config(spec, RUN_DOMID, log) if spec.bootloader else config
            return Domain(again, console_out=sink)

        runner = DomainRunner(lambda: spec, build, on_restart=restarting, restart_limit=RestartLimit())
        with _TerminalInput() as terminal, TerminationSignals(runner):
            stop_input = None
            if terminal is not None:
                terminal.on_quit = runner.destroy  # Ctrl-] on a terminal
                stop_input = terminal.pump(runner.console_input)
            try:
                ending = runner.run()
                result = ending.result
            finally:
                if stop_input is not None:
                    stop_input()
        if ending.too_fast:
            click.echo(f"\nhospes: {result.message}", err=True)
            return EXIT_DESTROYED
        if result.reason is ShutdownReason.REBOOT:
            click.echo("\n[hospes] the guest rebooted", err=True)
        if stats:
            _print_stats(result, sink, cpu)
    if result.reason is ShutdownReason.DESTROYED:
        click.echo("\nhospes: the guest was destroyed", err=True)
        return EXIT_DESTROYED
    if result.reason is ShutdownReason.CRASH:
        click.echo(f"\nhospes: the guest crashed: {result.message}", err=True)
        return EXIT_CRASHED
    if command:
        if sink.exit_status is None:
            click.echo("hospes: the guest stopped without reporting the command's exit status", err=True)
            return EXIT_NO_STATUS
        return sink.exit_status
    return 0


__all__ = ["register", "run_domain"]
