"""``hospes run``: boot one domain in the foreground, console on the terminal."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from hospes.cgroup import DomainCgroup
    from hospes.devices.block import DiskConfig
    from hospes.devices.net import VifConfig
    from hospes.domain import Domain

import click

from hospes.errors import HospesError

EXIT_MARK = re.compile(rb"hospes-exit-status=(\d+)")


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
        self.saved = None
        self.eof = False
        self.on_quit: Callable[[], None] = lambda: None

    def __enter__(self):
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

    def __call__(self) -> bytes | None:
        return self.read()

    def read(self) -> bytes | None:
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

    def pump_into(self, dom: "Domain") -> Callable[[], None]:
        """Feed stdin to ``dom``'s console from a thread of its own; return what stops it.

        The thread sleeps in select() on stdin and a wake-up pipe, so it costs
        nothing while the user types nothing.
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
                    dom.console_input(data)

        thread = threading.Thread(target=pump, name="console-input", daemon=True)
        thread.start()

        def stop() -> None:
            os.write(stop_w, b"x")
            thread.join()
            os.close(stop_w)
            os.close(stop_r)

        return stop

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            try:
                os.set_blocking(self.fd, True)
            except OSError:
                pass
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def _disk_configs(specs: tuple[str, ...]) -> tuple["DiskConfig", ...]:
    from hospes.devices.block import DiskConfig, vdev_number

    out = []
    for i, spec in enumerate(specs):
        path, _, mode = spec.partition(",")
        if mode not in ("", "rw", "ro"):
            raise HospesError(f"Disk {spec!r}: the mode after the comma must be ro or rw.")
        out.append(DiskConfig(Path(path), readonly=mode == "ro", vdev=vdev_number("xvd" + chr(ord("a") + i))))
    return tuple(out)


def _vif_configs(specs: tuple[str, ...], domid: int = 1) -> tuple["VifConfig", ...]:
    """``mac=..,tap=..,bridge=..,mtu=..,rate=..`` (every key optional) -> VifConfig, devids 0, 1, ..."""
    from hospes.devices.net import VifConfig, default_mac, parse_mac
    from hospes.toolstack.spec import VifRate

    out = []
    for devid, spec in enumerate(specs):
        keys: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key not in ("mac", "tap", "bridge", "mtu", "rate") or not value:
                raise HospesError(f"Network interface {spec!r}: {item!r} is not one of mac=MAC, tap=NAME, "
                                  "bridge=NAME, mtu=N, rate=RATE[@INTERVAL].")
            keys[key] = value
        mac = keys.get("mac", default_mac(domid, devid))
        parse_mac(mac)
        try:
            mtu = int(keys.get("mtu", "1500"))
        except ValueError:
            raise HospesError(f"Network interface {spec!r}: the MTU must be a number.") from None
        rate_bytes, rate_usecs = 0, 50_000
        if "rate" in keys:
            try:
                rate = VifRate.parse(keys["rate"])
            except ValueError as e:
                raise HospesError(f"Network interface {spec!r}: {e}.") from None
            rate_bytes, rate_usecs = rate.credit_bytes, rate.interval_usecs
        out.append(VifConfig(mac=mac, tap=keys.get("tap"), bridge=keys.get("bridge"), devid=devid, mtu=mtu,
                             rate_bytes=rate_bytes, rate_usecs=rate_usecs))
    return tuple(out)


def _on_terminate(dom) -> "Callable[[], None]":
    """SIGTERM/SIGHUP ask the guest to power off; a second one destroys it."""
    import signal

    asked: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if asked:
            dom.destroy()
            return
        asked.append(signum)
        dom.request_shutdown("poweroff")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def register(group: click.Group) -> None:
    @group.command("run", context_settings={"ignore_unknown_options": False})
    @click.option("--kernel", type=click.Path(path_type=Path), help="PV kernel (bzImage or ELF); default: Debian's cloud kernel.")
    @click.option("--ramdisk", type=click.Path(path_type=Path), help="Initrd; default: Hospes' busybox initramfs (only with the default kernel).")
    @click.option("--cmdline", default=None, help="Kernel command line.")
    @click.option("--memory", "memory", default=256, show_default=True, type=int, help="Memory in MiB.")
    @click.option("--vcpus", default=1, show_default=True, type=int, help="Number of vCPUs.")
    @click.option("--disk", "disks", multiple=True, metavar="PATH[,ro]",
                  help="A disk image as xvda, xvdb, ... (repeatable; ',ro' for read-only).")
    @click.option("--vif", "vifs", multiple=True, metavar="[mac=MAC][,tap=NAME][,bridge=BR][,mtu=N][,rate=R]",
                  help="A network interface eth0, eth1, ... on a host TAP device, put on bridge BR if "
                       "given; rate= limits what the guest sends, as xl's (e.g. 10Mb/s@50ms). Repeatable; "
                       "default MAC 00:16:3e:.. from the domid, TAP hospes<domid>.<n>; '' for all defaults.")
    @click.option("--on-reboot", type=click.Choice(["restart", "exit"]), default="restart", show_default=True,
                  help="What to do when the guest reboots.")
    @click.option("--cap", type=click.IntRange(0, 65535), default=0, show_default=True,
                  help="CPU limit in percent of one host CPU (xl's cap; 0 = none), via a cgroup.")
    @click.option("--weight", type=click.IntRange(1, 65535), default=256, show_default=True,
                  help="Relative CPU share against other domains (xl's cpu_weight), via a cgroup.")
    @click.option("--stats", is_flag=True, help="Print exit counts by kind when the guest stops.")
    @click.argument("command", nargs=-1)
    def run(kernel: Path | None, ramdisk: Path | None, cmdline: str | None, memory: int, vcpus: int,
            disks: tuple[str, ...], vifs: tuple[str, ...], on_reboot: str, cap: int, weight: int,
            stats: bool, command: tuple[str, ...]) -> None:
        """Boot a domain; with `-- CMD ARGS...` run CMD in the guest and exit with its status."""
        from hospes.cgroup import SchedParams, confine

        params = SchedParams(weight=weight, cap=cap)
        cgroup = confine(1, params) if not params.is_default else None
        try:
            _run(kernel, ramdisk, cmdline, memory, vcpus, disks, vifs, on_reboot, stats, command, cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()


def _run(kernel: Path | None, ramdisk: Path | None, cmdline: str | None, memory: int, vcpus: int,
         disks: tuple[str, ...], vifs: tuple[str, ...], on_reboot: str, stats: bool,
         command: tuple[str, ...], cgroup: "DomainCgroup | None") -> None:
    """Build and run the domain (again after each reboot, unless told to exit); exits with the outcome."""
    from hospes.domain import Domain, DomainConfig

    if kernel is None:
        from hospes.images import ensure_default_images

        images = ensure_default_images(log=lambda m: click.echo(m, err=True))
        kernel = images.kernel
        if ramdisk is None:
            ramdisk = images.initramfs
    if cmdline is None:
        cmdline = "console=hvc0 quiet" if ramdisk is not None else ""
    if command:
        from hospes.images import encode_command

        cmdline = f"{cmdline} {encode_command(list(command))}".strip()
    if ramdisk is not None and not Path(ramdisk).exists():
        raise HospesError(f"Ramdisk {ramdisk} does not exist; check the path or run `hospes image`.")
    sink = _ConsoleSink()
    config = DomainConfig(kernel=kernel, ramdisk=ramdisk, cmdline=cmdline, memory_mib=memory, vcpus=vcpus,
                          disks=_disk_configs(disks), vifs=_vif_configs(vifs))
    with _TerminalInput() as read_input:
        while True:
            dom = Domain(config, console_out=sink)
            if read_input is not None:
                read_input.on_quit = dom.destroy  # Ctrl-] on a terminal
            restore = _on_terminate(dom)
            stop_input = read_input.pump_into(dom) if read_input is not None else None
            try:
                result = dom.run()
            finally:
                if stop_input is not None:
                    stop_input()
                restore()
                dom.close()
            if result.reason != "reboot" or on_reboot == "exit":
                break
            click.echo("\n[hospes] the guest rebooted; starting it again", err=True)
    if result.reason == "reboot":
        click.echo("\n[hospes] the guest rebooted", err=True)
    elapsed = time.monotonic() - sink.t0
    if stats:
        click.echo(f"\n[hospes] {result.reason} after {elapsed:.2f} s"
                   + (f", first userspace line at {sink.first_userspace:.2f} s" if sink.first_userspace else ""),
                   err=True)
        for key, n in sorted(result.stats.items(), key=lambda kv: -kv[1]):
            click.echo(f"[hospes]   {key:24} {n}", err=True)
        if cgroup is not None:
            t = cgroup.throttled()
            ns = t.get("throttled_time", t.get("throttled_usec", 0) * 1000)
            click.echo(f"[hospes] cgroup {cgroup.path}: throttled in {t.get('nr_throttled', 0)} of "
                       f"{t.get('nr_periods', 0)} periods, {ns / 1e9:.2f} s", err=True)
    if result.reason == "destroyed":
        click.echo("\nhospes: the guest was destroyed", err=True)
        sys.exit(5)
    if result.reason == "crash":
        click.echo(f"\nhospes: the guest crashed: {result.message}", err=True)
        sys.exit(3)
    if command:
        if sink.exit_status is None:
            click.echo("hospes: the guest stopped without reporting the command's exit status", err=True)
            sys.exit(4)
        sys.exit(sink.exit_status)
    sys.exit(0)


__all__ = ["register", "os"]
