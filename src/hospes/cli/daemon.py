"""``hospes daemon start|stop|status``: run hospesd (the CLI also starts it on demand).

Stopping the daemon leaves the domains running in their own processes; the next
daemon on the same runtime directory finds them again.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hospes.errors import HospesError

if TYPE_CHECKING:
    from hospes.toolstack.rundir import RunDir


def _run_dir(run_dir: Path | None) -> "RunDir":
    from hospes.toolstack.rundir import RunDir

    return RunDir(run_dir.absolute()) if run_dir else RunDir.default()


def _daemon_pid(run: "RunDir") -> int | None:
    """The running hospesd's pid, or None. A pid file alone is no proof (pids are
    reused, a daemon killed with SIGKILL leaves its file): the pid counts only
    while that process holds the run directory's lock, as /proc/locks shows
    (looked at, not taken: taking it, even for a moment, could make a starting
    daemon believe another one runs)."""
    try:
        pid = int(run.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid in _lock_holders(run.lock_file) else None


def _lock_holders(path: Path) -> set[int]:
    """The pids holding a flock on ``path``, from /proc/locks."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want and fields[4].isdigit():
            holders.add(int(fields[4]))
    return holders


def register(group: click.Group) -> None:
    @group.group("daemon")
    def daemon() -> None:
        """Start, stop or check hospesd, the node daemon."""

    run_dir_opt = click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                               help="Runtime directory (default $HOSPES_RUN_DIR or /run/hospes).")

    @daemon.command("start")
    @run_dir_opt
    @click.option("--foreground", "-F", is_flag=True, help="Serve in this process (logs on stderr).")
    @click.option("--tcp", default=None, metavar="HOST:PORT",
                  help="Also listen on TCP (needs a token; an address other than loopback needs TLS).")
    @click.option("--token-file", type=click.Path(path_type=Path), default=None,
                  help="Bearer token for TCP clients (else $HOSPES_API_TOKEN).")
    @click.option("--tls-cert", type=click.Path(path_type=Path), default=None,
                  help="Serve the TCP API over TLS with this PEM certificate (chain).")
    @click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="The PEM key of --tls-cert.")
    @click.option("--overcommit", type=float, default=None, metavar="RATIO",
                  help="Admit domains while their memory stays within RATIO x the host's (default 1.0).")
    @click.option("--no-jail", "no_jail", is_flag=True,
                  help="Run domain processes unjailed: as root, host files, every system call (debugging).")
    def start(run_dir: Path | None, foreground: bool, tcp: str | None, token_file: Path | None,
              tls_cert: Path | None, tls_key: Path | None, overcommit: float | None, no_jail: bool) -> None:
        """Start hospesd (in the background unless -F)."""
        run = _run_dir(run_dir)
        args = ["--run-dir", str(run.root)]
        if tcp:
            args += ["--tcp", tcp]
        if token_file:
            args += ["--token-file", str(token_file.absolute())]
        if tls_cert:
            args += ["--tls-cert", str(tls_cert.absolute())]
        if tls_key:
            args += ["--tls-key", str(tls_key.absolute())]
        if overcommit is not None:
            args += ["--overcommit", str(overcommit)]
        if no_jail:
            args += ["--no-jail"]
        if foreground:
            from hospes.toolstack.daemon import main

            sys.exit(main(args))
        if _daemon_pid(run) is not None:
            click.echo(f"hospesd is already running on {run.root}", err=True)
            return
        if tcp or overcommit is not None or no_jail:
            import subprocess

            from hospes.toolstack.rundir import DAEMON_LOG_ROTATE_BYTES, rotate_log

            run.ensure()
            rotate_log(run.daemon_log, DAEMON_LOG_ROTATE_BYTES)
            with open(run.daemon_log, "ab") as log:
                subprocess.Popen([sys.executable, "-m", "hospes.toolstack.daemon", *args], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True)
            time.sleep(1.0)
            if _daemon_pid(run) is None:
                raise HospesError(f"hospesd did not start; see {run.daemon_log}.")
        else:
            from hospes.toolstack.client import start_daemon

            start_daemon(run)
        click.echo(f"hospesd running on {run.api_socket}", err=True)

    @daemon.command("stop")
    @run_dir_opt
    def stop(run_dir: Path | None) -> None:
        """Stop hospesd (domains keep running)."""
        run = _run_dir(run_dir)
        pid = _daemon_pid(run)
        if pid is None:
            click.echo("hospesd is not running", err=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _daemon_pid(run) == pid:
            time.sleep(0.05)
        if _daemon_pid(run) == pid:
            raise HospesError(f"hospesd ({pid}) did not stop within 10 s.")

    @daemon.command("status")
    @run_dir_opt
    def status(run_dir: Path | None) -> None:
        """Say whether hospesd runs; exit 1 if not."""
        run = _run_dir(run_dir)
        pid = _daemon_pid(run)
        if pid is None:
            click.echo("hospesd is not running")
            sys.exit(1)
        click.echo(f"hospesd is running (pid {pid}) on {run.api_socket}")
