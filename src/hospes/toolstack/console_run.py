"""Running a command in a guest through its console shell: the marker protocol.

The guest's console (hvc0) runs an interactive shell (the default initramfs's
/init does). To run a command there and learn its exit status, the host types
two kinds of line into the console:

1. probes, ``printf '%s-%s\\n' TOKEN ready``, every PROBE_INTERVAL seconds until
   ``TOKEN-ready`` comes back: the shell is reading commands;
2. once, the command line::

       printf '%s-%s\\n' TOKEN begin; (eval "$(echo B64 | base64 -d)") </dev/null; printf '%s-%s %s\\n' TOKEN end $?

The command travels base64-encoded, so its quoting and newlines survive. The
markers in the output (``TOKEN-begin``, ``TOKEN-end N``) never appear in the
terminal's echo of the typed lines, which have ``TOKEN begin`` with a space. The
output is what lies between the two markers, CRLFs turned into LFs. TOKEN is
random per run, so output that merely contains another run's markers cannot
confuse this one.

A console that shows a getty's ``login:`` prompt (a distribution booted with
pygrub) is logged into first, as :data:`LOGIN_USER`, which must need no password
there (``hospes image --rootfs`` makes such images). So the run starts with a
bare newline and looks at the answer: a login prompt gets the user name, a shell
prompt (or silence for :data:`WAKE_WAIT` seconds) starts the probes; a login
prompt seen later (the guest rebooted, the shell exited) is answered again.
:meth:`MarkerRun.to_type` says what to type when; a password prompt after the
user name is an error (one after a probe, which a getty starting just then took
for a user name, gets an empty password to fail that login).

Limits: the typed line must fit the tty's 4 KiB line buffer (MAX_COMMAND bytes
of command); the command's stdin is /dev/null; a person attached to the same
console sees the lines and can disturb them.
"""

from __future__ import annotations

import base64
import re
import secrets

MAX_COMMAND = 2048
PROBE_INTERVAL = 2.0
KILL_LINE = b"\x15"   # ^U: discard anything half-typed on the console first
WAKE_WAIT = 1.0       # seconds to wait for a prompt after the first newline
LOGIN_USER = "root"
MAX_LOGINS = 3
_LOGIN_PROMPT = re.compile(rb"login: *$")
_PASSWORD_PROMPT = re.compile(rb"[Pp]assword: *$")
_SHELL_PROMPT = re.compile(rb"[#$] *$")


class MarkerRun:
    """The parser for one run; feed it console output, read ``ready``/``done``."""

    def __init__(self, command: str, token: str | None = None) -> None:
        if len(command.encode()) > MAX_COMMAND:
            raise ValueError(f"The command is longer than {MAX_COMMAND} bytes; put it in a script in the guest.")
        self.command = command
        self.token = token or f"hospes{secrets.token_hex(6)}"
        self._buf = b""
        self.ready = False
        self.done = False
        self.exit_status: int | None = None
        self.output = ""
        t = re.escape(self.token.encode())
        self._ready_re = re.compile(t + rb"-ready\r?\n")
        self._phase = "wake"      # wake -> waking -> [login ->] probing; ready/done from the output
        self._since = 0           # output before this offset was there at the last thing typed
        self._typed_at = 0.0
        self._logins = 0
        self._sent = False
        self._run_re = re.compile(t + rb"-begin\r?\n(.*?)" + t + rb"-end (\d+)\r?\n", re.S)

    def to_type(self, now: float) -> bytes:
        """What to type on the console at time ``now`` (monotonic seconds): b"" for nothing.

        Call it often (at least every half second) with the output fed in between.
        Raises ValueError when the console asks for a password."""
        if self.done:
            return b""
        if self.ready:
            if self._sent:
                return b""
            self._sent = True
            return self.command_line()
        fresh = self._buf[self._since:][-256:]
        if self._phase == "wake":
            return self._type(b"\n", "waking", now)
        if _PASSWORD_PROMPT.search(fresh) and self._phase != "login":
            # A probe typed just as the getty started became a user name: fail that login.
            return self._type(b"\n", "waking", now)
        if _PASSWORD_PROMPT.search(fresh):
            raise ValueError(f"The console asks for {LOGIN_USER}'s password; hospes exec logs in only as "
                             f"{LOGIN_USER} without a password (log in with hospes console instead).")
        if _LOGIN_PROMPT.search(fresh):
            self._logins += 1
            if self._logins > MAX_LOGINS:
                raise ValueError(f"Logging in as {LOGIN_USER} on the console failed {MAX_LOGINS} times.")
            return self._type(f"{LOGIN_USER}\n".encode(), "login", now)
        waited = now - self._typed_at
        if self._phase in ("waking", "login") and not _SHELL_PROMPT.search(fresh) and waited < (
                WAKE_WAIT if self._phase == "waking" else PROBE_INTERVAL):
            return b""
        if self._phase != "probing" or waited >= PROBE_INTERVAL:
            return self._type(self.probe_line(), "probing", now)
        return b""

    def _type(self, data: bytes, phase: str, now: float) -> bytes:
        self._phase = phase
        self._since = len(self._buf)
        self._typed_at = now
        return data

    def probe_line(self) -> bytes:
        return KILL_LINE + f"printf '%s-%s\\n' {self.token} ready\n".encode()

    def command_line(self) -> bytes:
        b64 = base64.b64encode(self.command.encode()).decode()
        t = self.token
        return (KILL_LINE + f"printf '%s-%s\\n' {t} begin; (eval \"$(echo {b64} | base64 -d)\") </dev/null; "
                f"printf '%s-%s %s\\n' {t} end $?\n".encode())

    def feed(self, data: bytes) -> None:
        """Console output; sets ``ready``, then ``done`` with ``exit_status`` and ``output``."""
        self._buf += data
        if not self.ready and self._ready_re.search(self._buf):
            self.ready = True
        m = self._run_re.search(self._buf)
        if m:
            self.ready = True
            self.done = True
            self.exit_status = int(m.group(2))
            self.output = m.group(1).replace(b"\r\n", b"\n").decode(errors="replace")
        elif len(self._buf) > 8 * 1024 * 1024:
            raise ValueError("The command printed more than 8 MiB; redirect its output to a file in the guest.")
