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
        self._run_re = re.compile(t + rb"-begin\r?\n(.*?)" + t + rb"-end (\d+)\r?\n", re.S)

    def probe_line(self) -> bytes:
        return KILL_LINE + f"printf '%s-%s\\n' {self.token} ready\n".encode()

    def command_line(self) -> bytes:
        b64 = base64.b64encode(self.command.encode()).decode()
        t = self.token
        return (KILL_LINE + f"printf '%s-%s\\n' {t} begin; (eval \"$(echo {b64} | base64 -d)\") </dev/null; "
                f"printf '%s-%s %s\\n' {t} end $?\n".encode())

    def feed(self, data: bytes) -> None:
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
