"""Running a command in a guest through its console shell: the marker protocol.

The guest's console (hvc0) runs an interactive shell (the default initramfs's
/init does). To run a command there and learn its exit status, the host types
lines into the console:

1. probes, ``printf '%s-%s\\n' TOKEN ready``, every PROBE_INTERVAL seconds until
   ``TOKEN-ready`` comes back: the shell is reading commands;
2. a short command goes as one line::

       printf '%s-%s\\n' TOKEN begin; (eval "$(echo B64 | base64 -d)") </dev/null; printf '%s-%s %s\\n' TOKEN end $?

3. a longer one as one short line that reads the base64 text from the console,
   block by block, with the terminal's echo off, then runs it as in 2::

       stty -echo; hospes_TOKEN=; i=0; while [ $i -lt NBLOCKS ]; do printf '%s-a%s\\n' TOKEN $i;
       n=...; hospes_TOKEN=$hospes_TOKEN$(head -n $n); i=$((i+1)); done; stty echo; printf ... begin; ...

   after the guest prints ``TOKEN-aI`` the host types block I: BLOCK_LINES lines of
   base64 (LINE_B64 characters each, a multiple of 4, so the blocks join into one
   valid text without their newlines).

Why: busybox's line editor takes at most 1024 bytes on a line (its
CONFIG_FEATURE_EDITING_MAX_LEN); the rest of a longer line is dropped, the
shell then sees an unclosed quote and waits for more: the "wedged console" of
commands over ~700 bytes, whose base64 line passed 1024. The line editor also
echoes every typed character with a write of its own (one console notification
each), which makes typing long text slow; ``head`` on the tty in canonical mode
with echo off takes a line per read and echoes nothing. Each block is typed
only once the guest asks for it, so the typed-ahead input stays within what the
console backend keeps for a guest (64 KiB) and the tty's 4 KiB line buffer
holds whole lines.

The command travels base64-encoded, so its quoting and newlines survive. The
markers in the output (``TOKEN-begin``, ``TOKEN-end N``, ``TOKEN-aN``) never
appear in the terminal's echo of the typed lines, where the token is a separate
printf argument. The output is what lies between the begin and end markers, CRLFs
turned into LFs. TOKEN is random per run, so output that merely contains
another run's markers cannot confuse this one.

A console that shows a getty's ``login:`` prompt (a distribution booted with
pygrub) is logged into first, as :data:`LOGIN_USER`, which must need no password
there (``hospes image --rootfs`` makes such images). So the run starts with a
bare newline and looks at the answer: a login prompt gets the user name, a shell
prompt (or silence for :data:`WAKE_WAIT` seconds) starts the probes; a login
prompt seen later (the guest rebooted, the shell exited) is answered again.
:meth:`MarkerRun.to_type` says what to type when (the command's lines and blocks too); a password prompt after the
user name is an error (one after a probe, which a getty starting just then took
for a user name, gets an empty password to fail that login).

Limits: MAX_COMMAND bytes of command (the API's body is at most 1 MiB); the
command's stdin is /dev/null; a person attached to the same console sees the
lines and can disturb them. A long command given up on (timeout) while its
blocks were being typed would leave the shell in its reading loop with the
echo off: the driver then types ABANDON_READ (Ctrl-C, which ends the loop, and
``stty echo``).
"""

from __future__ import annotations

import base64
import re
import secrets

MAX_COMMAND = 512 * 1024
LINE_MAX = 640          # a command whose one line is longer goes in blocks (busybox edits <= 1024)
LINE_B64 = 1000         # base64 characters per typed block line (a multiple of 4, far below the tty's 4095)
BLOCK_LINES = 16        # lines per block: 16 KiB typed ahead at most
PROBE_INTERVAL = 2.0
KILL_LINE = b"\x15"   # ^U: discard anything half-typed on the console first
ABANDON_READ = b"\x03" + KILL_LINE + b"stty echo\n"   # ^C ends the block-reading loop; echo back on
WAKE_WAIT = 1.0       # seconds to wait for a prompt after the first newline
LOGIN_USER = "root"
MAX_LOGINS = 3
_LOGIN_PROMPT = re.compile(rb"login: *$")
_PASSWORD_PROMPT = re.compile(rb"[Pp]assword: *$")
_SHELL_PROMPT = re.compile(rb"[#$] *$")


class MarkerRun:
    """The parser for one run; feed it console output, read ``ready``/``done``, and type
    what :meth:`to_type` says (a wake-up newline, a login name, probes, then each
    line or block of the command from :meth:`next_line` once the guest asked for it)."""

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
        self._run_re = re.compile(t + rb"-begin\r?\n(.*?)" + t + rb"-end (\d+)\r?\n", re.S)
        self._ack_re = re.compile(t + rb"-a(\d+)\r?\n")
        self._lines = self._make_lines()
        self.sent = 0          # items of _lines typed so far
        self.asked = 0         # blocks the guest has asked for

    def to_type(self, now: float) -> bytes:
        """What to type on the console at time ``now`` (monotonic seconds): b"" for nothing.

        Call it often (at least every half second) with the output fed in between.
        Raises ValueError when the console asks for a password."""
        if self.done:
            return b""
        if self.ready:
            return self.next_line() or b""
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

    def _run_line(self, source: str) -> str:
        t = self.token
        return (f"printf '%s-%s\\n' {t} begin; (eval \"$({source} | base64 -d)\") </dev/null; "
                f"printf '%s-%s %s\\n' {t} end $?")

    def _make_lines(self) -> list[bytes]:
        """The single command line; or the reading loop's line followed by the blocks."""
        b64 = base64.b64encode(self.command.encode()).decode()
        single = self._run_line(f"echo {b64}")
        if len(single) + 1 <= LINE_MAX:
            return [KILL_LINE + single.encode() + b"\n"]
        rows = [b64[at:at + LINE_B64] for at in range(0, len(b64), LINE_B64)]
        blocks = [rows[at:at + BLOCK_LINES] for at in range(0, len(rows), BLOCK_LINES)]
        var, t, n = f"hospes_{self.token}", self.token, len(rows)
        source = 'printf %s "$' + var + '"'
        loop = (f"stty -echo; {var}=; i=0; while [ $i -lt {len(blocks)} ]; do printf '%s-a%s\\n' {t} $i; "
                f"n=$(({n} - i * {BLOCK_LINES})); [ $n -gt {BLOCK_LINES} ] && n={BLOCK_LINES}; "
                f"{var}=${var}$(head -n $n); i=$((i + 1)); done; stty echo; {self._run_line(source)}; unset {var}")
        return [KILL_LINE + loop.encode() + b"\n", *("".join(r + "\n" for r in b).encode() for b in blocks)]

    @property
    def reading(self) -> bool:
        """The guest's shell may be in the block-reading loop (a long command, not done yet)."""
        return len(self._lines) > 1 and self.sent > 0 and not self.done

    def command_line(self) -> bytes:
        """Everything typed after the probes, in order (one line for a short command)."""
        return b"".join(self._lines)

    def next_line(self) -> bytes | None:
        """The next line or block to type; None until the guest asks for it (or when all are sent)."""
        if not self.ready or self.sent >= len(self._lines) or (self.sent > 0 and self.asked < self.sent):
            return None
        line = self._lines[self.sent]
        self.sent += 1
        return line

    def feed(self, data: bytes) -> None:
        self._buf += data
        if not self.ready and self._ready_re.search(self._buf):
            self.ready = True
        if self.ready and len(self._lines) > 1:
            last = -1
            for ack in self._ack_re.finditer(self._buf):
                self.asked = max(self.asked, int(ack.group(1)) + 1)
                last = ack.end()
            if last >= 0:       # the guest's requests all come before the begin marker: drop what they end
                self._buf = self._buf[last:]
        m = self._run_re.search(self._buf)
        if m:
            self.ready = True
            self.done = True
            self.exit_status = int(m.group(2))
            self.output = m.group(1).replace(b"\r\n", b"\n").decode(errors="replace")
        elif len(self._buf) > 8 * 1024 * 1024:
            raise ValueError("The command printed more than 8 MiB; redirect its output to a file in the guest.")
