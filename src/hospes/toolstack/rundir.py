"""The runtime directory: where the daemon and the domain processes meet.

Layout (``$HOSPES_RUN_DIR``, else ``/run/hospes``)::

    hospesd.sock          the daemon's HTTP API (Unix socket, mode 0600)
    hospesd.lock          flock held by the running daemon (one per directory)
    hospesd.pid           the daemon's pid, for ``hospes daemon stop``
    hospesd.log           the daemon's own log (when started in the background)
    hospesd.json          the daemon's settings its domain processes apply too (overcommit)
    next-domid            the domid counter (counts up, wraps below 0x7ff0, as Xen's), under flock
    domains/<id>.json     one state record per domain (see :mod:`.record`)
    domains/<id>.sock     the domain process's control socket (see :mod:`.control`)
    domains/<id>.err      the domain process's stderr (bounded: see ERR_ROTATE_BYTES)
    logs/console-<id>.log the domain's console output (``$HOSPES_LOG_DIR`` overrides)

Logs are bounded: past its limit a log is renamed to ``<name>.1`` (replacing the
previous one) and started afresh, so each takes at most twice its limit. A new
domain instance starts a fresh console log (a reused domid's old log becomes
``.1``), and hospesd's own log is rotated when the daemon starts past its limit.

Everything that must survive a daemon restart is a file here; the daemon's
memory is only a cache.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from hospes.errors import HospesError

DEFAULT_RUN_DIR = Path("/run/hospes")
UNIX_PATH_MAX = 107
DOMID_FIRST = 1
DOMID_LAST = 0x7FEF     # DOMID_FIRST_RESERVED (0x7ff0) and up name no domain (xen.h)
CONSOLE_ROTATE_BYTES = 16 * 1024 * 1024
ERR_ROTATE_BYTES = 1024 * 1024
DAEMON_LOG_ROTATE_BYTES = 16 * 1024 * 1024


def rotate_log(path: Path, over: int = 0) -> bool:
    """Rename ``path`` to ``path.1`` (replacing an older one) if it holds more than ``over``
    bytes; True if it did. A missing file or a failed rename is no error: logging goes on."""
    try:
        if os.stat(path).st_size <= over:
            return False
        os.replace(path, path.with_name(path.name + ".1"))
        return True
    except OSError:
        return False


class RunDirError(HospesError):
    """The runtime directory is unusable."""


def default_run_dir() -> Path:
    """``$HOSPES_RUN_DIR`` if set, else ``/run/hospes``."""
    env = os.environ.get("HOSPES_RUN_DIR")
    return Path(env).expanduser().absolute() if env else DEFAULT_RUN_DIR


@dataclass(frozen=True)
class RunDir:
    """Paths inside one runtime directory; ``ensure()`` creates the folders."""

    root: Path

    @classmethod
    def default(cls) -> "RunDir":
        return cls(default_run_dir())

    @property
    def api_socket(self) -> Path:
        return self.root / "hospesd.sock"

    @property
    def lock_file(self) -> Path:
        return self.root / "hospesd.lock"

    @property
    def pid_file(self) -> Path:
        return self.root / "hospesd.pid"

    @property
    def settings_file(self) -> Path:
        return self.root / "hospesd.json"

    @property
    def daemon_log(self) -> Path:
        return self.root / "hospesd.log"

    @property
    def domains(self) -> Path:
        return self.root / "domains"

    @property
    def logs(self) -> Path:
        env = os.environ.get("HOSPES_LOG_DIR")
        return Path(env).expanduser().absolute() if env else self.root / "logs"

    def state_file(self, domid: int) -> Path:
        return self.domains / f"{domid}.json"

    def control_socket(self, domid: int) -> Path:
        return self.domains / f"{domid}.sock"

    def stderr_file(self, domid: int) -> Path:
        return self.domains / f"{domid}.err"

    def console_log(self, domid: int) -> Path:
        return self.logs / f"console-{domid}.log"

    def ensure(self) -> "RunDir":
        """Create the directories (mode 0700); fail with advice if that is impossible."""
        try:
            for d in (self.root, self.domains, self.logs):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise RunDirError(
                f"Cannot create the runtime directory {self.root}: {e.strerror}; "
                "set HOSPES_RUN_DIR to a writable directory."
            ) from e
        if len(str(self.control_socket(999999))) > UNIX_PATH_MAX:
            raise RunDirError(
                f"The runtime directory {self.root} is too long a path for Unix sockets; "
                "set HOSPES_RUN_DIR to a shorter one."
            )
        return self

    def domids(self) -> list[int]:
        """Domids that have a state record, in ascending order."""
        out = []
        try:
            names = os.listdir(self.domains)
        except FileNotFoundError:
            return []
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext == "json" and stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def allocate_domid(self) -> int:
        """Return the next free domid, as Xen hands them out: counting up from 1, past
        the highest in use, and once the last ordinary domid (0x7fef; 0x7ff0 is
        DOMID_FIRST_RESERVED, DOMID_SELF and the like) is taken, round again from 1,
        skipping the domids still in use."""
        self.ensure()
        path = self.root / "next-domid"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 32).decode(errors="replace").strip()
            nxt = int(raw) if raw.isdigit() else DOMID_FIRST
            existing = self.domids()
            if existing:
                nxt = max(nxt, existing[-1] + 1)
            if not DOMID_FIRST <= nxt <= DOMID_LAST:
                nxt = DOMID_FIRST
            in_use = set(existing)
            for _ in range(DOMID_LAST):
                if nxt not in in_use:
                    break
                nxt = nxt + 1 if nxt < DOMID_LAST else DOMID_FIRST
            else:
                raise RunDirError(f"All {DOMID_LAST} domids are in use; destroy a domain first.")
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{nxt + 1}\n".encode())
            return nxt
        finally:
            os.close(fd)
