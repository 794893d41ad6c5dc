"""What a ``grub.cfg`` boots: its menu entries and which one is the default.

GRUB runs grub.cfg as a script and shows the menu the script defined. This runs
the part of that script which decides the menu, as GRUB 2.06 built for Xen
(``grub_platform`` ``xen``, GRUB 2.06's ``feature_*`` flags) would on the guest:

- ``set``/``unset``/``NAME=VALUE`` and ``$var``/``${var}`` (not inside single
  quotes; an unquoted empty value is no word, as in GRUB), ``load_env`` (the
  ``grubenv`` beside grub.cfg, only when the script loads it);
- ``if``/``elif``/``else``/``fi`` with ``[ ... ]``/``test`` conditions as GRUB's
  test command reads them (strings, integers, ``-pgt``/``-plt``, ``-z``/``-n``,
  ``!``, ``-a``/``-o``, parentheses, and ``-e``/``-f``/``-d``/``-s``/``-nt``/``-ot``
  on the filesystem holding grub.cfg; GRUB's corners too: ``[ ]`` is true, a
  missing ``]`` is forgiven), ``true`` and ``false``;
- ``menuentry`` and ``submenu`` blocks, defined where the script reaches them and
  run, as GRUB runs them when chosen, after the whole script with the variables
  it left (each body on its own copy); ``linux``/``initrd`` lines in them;
- ``$default`` when the script ends: an index, an ``N>M`` path into a submenu,
  an entry's title or ``--id`` (often from grubenv's ``next_entry`` or
  ``saved_entry`` through Debian's header).

tests/test_pygrub.py checks the conditions against Debian's PV GRUB 2.06 itself.
``$prefix`` is the directory of grub.cfg in the image, as for a GRUB installed
there (``grub-install``), so Debian's ``[ -s $prefix/grubenv ]`` sees the image's
grubenv; PV GRUB's own ``$prefix`` is its memdisk, where it finds none.

Where GRUB's outcome cannot be known here, the choice is GRUB's own for a
command it cannot run: any other command (``loadfont``, ``search``,
``keystatus``, ``fwsetup`` ...) is not run and counts as failed, so as an ``if``
condition it takes the ``else`` branch and leaves ``$?`` 1. Bodies of
``function``, ``for``, ``while`` and ``until`` are not run, and ``source`` and
``configfile`` are not followed. ``save_env`` writes nothing: the image is never
written, so a ``grub-reboot`` entry (grubenv's ``next_entry``) is booted until
the guest clears it, where GRUB clears it at its first use.

Paths on ``linux``/``initrd`` lines and in file tests may start with a GRUB
device, ``(hd0,gpt2)/vmlinuz``; the device is dropped and the path is taken on
the filesystem that holds grub.cfg.
"""

from __future__ import annotations

import operator
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hospes.errors import HospesError

#: Commands that load a kernel / initrds (BIOS, 16-bit and EFI spellings).
LINUX_COMMANDS = frozenset({"linux", "linux16", "linuxefi", "kernel"})
INITRD_COMMANDS = frozenset({"initrd", "initrd16", "initrdefi"})
#: The feature flags GRUB 2.06's normal mode sets to "y" before it runs grub.cfg
#: (grub-core/normal/main.c); generated configs test them before using a feature.
GRUB_FEATURES = ("feature_chainloader_bpb", "feature_ntldr", "feature_platform_search_hint",
                 "feature_default_font_path", "feature_all_video_module", "feature_menuentry_id",
                 "feature_menuentry_options", "feature_200_final", "feature_nativedisk_cmd",
                 "feature_timeout_style")
#: The platform pygrub stands in for: GRUB built for Xen PV on x86-64 (pvgrub2).
PLATFORM = {"grub_platform": "xen", "grub_cpu": "x86_64"}
#: Deepest nesting of submenus taken (GRUB has no limit; a hostile grub.cfg must not
#: exhaust the toolstack's stack).
MAX_SUBMENU_DEPTH = 16
#: Deepest nesting of parentheses in a test (likewise).
MAX_TEST_DEPTH = 64
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|\?")
_DEVICE = re.compile(r"^\([^)]*\)")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_LEADING_KEYWORD = re.compile(r"(then|else|do)\s+(.+)", re.S)

#: What a file test needs of a path (symlinks followed): (st_mode, size, mtime), or None if absent.
FileStat = Callable[[str], "tuple[int, int, int] | None"]


class GrubConfigError(HospesError):
    """grub.cfg cannot be read as a menu, or names no entry that can boot."""


@dataclass(frozen=True)
class MenuEntry:
    """One bootable entry: where it sits in the menu, and what it loads."""

    title: str
    path: tuple[int, ...]        # indexes from the top menu down, as GRUB's "1>2"
    entry_id: str | None = None  # menuentry --id / $menuentry_id_option
    kernel: str | None = None    # path on the filesystem holding grub.cfg
    initrds: tuple[str, ...] = ()
    args: str = ""

    @property
    def index(self) -> str:
        return ">".join(str(i) for i in self.path)


@dataclass
class GrubMenu:
    """The entries of one grub.cfg in menu order (submenus flattened) and its default."""

    entries: list[MenuEntry] = field(default_factory=list)
    default: str = "0"
    variables: dict[str, str] = field(default_factory=dict)

    def select(self, choice: str | None = None) -> MenuEntry:
        """The entry ``choice`` names (index, ``N>M``, title or id), else the default one.

        GRUB falls back to the first entry when the default names none; so does this,
        but an explicit ``choice`` that names nothing is an error."""
        if not self.entries:
            raise GrubConfigError("grub.cfg has no menuentry with a linux line")
        if choice is not None:
            entry = self._find(choice)
            if entry is None:
                listing = "; ".join(f"{e.index}: {e.title}" for e in self.entries)
                raise GrubConfigError(f"grub.cfg has no entry {choice!r}; it has {listing}")
            return entry
        return self._find(self.default) or self.entries[0]

    def _find(self, name: str) -> MenuEntry | None:
        name = name.strip()
        if not name:
            return None
        if re.fullmatch(r"\d+(>\d+)*", name):
            path = tuple(int(p) for p in name.split(">"))
            for entry in self.entries:
                if entry.path == path:
                    return entry
            # "1" naming a submenu means its first entry, as GRUB boots it
            for entry in self.entries:
                if entry.path[:len(path)] == path:
                    return entry
            return None
        for entry in self.entries:
            if name in (entry.title, entry.entry_id):
                return entry
        # "Advanced options>Debian, with Linux ..." (titles joined with '>')
        tail = name.rsplit(">", 1)[-1]
        for entry in self.entries:
            if tail in (entry.title, entry.entry_id) and ">" in name:
                return entry
        return None


def builtin_variables(prefix: str = "/boot/grub") -> dict[str, str]:
    """The variables GRUB has set when grub.cfg starts: features, platform, ``prefix``
    (the directory holding grub.cfg) and ``config_directory``."""
    variables = {name: "y" for name in GRUB_FEATURES}
    variables.update(PLATFORM)
    variables.update(prefix=prefix, config_directory=prefix, cmdpath=prefix)
    variables["?"] = "0"
    return variables


def parse(text: str, grubenv: Mapping[str, str] | None = None, files: FileStat | None = None,
          prefix: str = "/boot/grub") -> GrubMenu:
    """Run grub.cfg ``text`` far enough to know its menu.

    ``grubenv``: the variables of ``$prefix/grubenv`` (what ``load_env`` loads);
    ``files``: the file tests' view of the filesystem holding grub.cfg (none: every
    file test is false); ``prefix``: the directory of grub.cfg on it."""
    script = _Script(grubenv, files, prefix)
    variables = builtin_variables(prefix)
    menu = GrubMenu(variables=variables)
    menu.entries = script.menu(_statements(text), variables, (), depth=0)
    menu.default = variables.get("default", "0")
    return menu


def parse_grubenv(text: str) -> dict[str, str]:
    """The variables of a ``grubenv`` block (``name=value`` lines, '#' padding)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        env[name.strip()] = value
    return env


def words(statement: str, variables: Mapping[str, str] | None = None) -> list[str]:
    """One statement's words with GRUB's quoting: '...' literal, "..." and bare text with
    ``$var`` expanded (when ``variables`` is given), backslash escapes.

    An unquoted expansion is split at blanks, and one that is empty makes no word,
    so ``[ $unset = x ]`` has three words and ``[ "$unset" = x ]`` four, as in GRUB."""
    out: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = ""
    i, n = 0, len(statement)
    while i < n:
        c = statement[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                cur.append(c)
        elif c == "$" and variables is not None and (found := _variable_at(statement, i + 1)) is not None:
            name, i = found
            value = variables.get(name, "")
            if quote:
                cur.append(value)
                continue
            pieces = value.split()
            if value[:1].isspace() and in_word:
                out.append("".join(cur))
                cur, in_word = [], False
            for k, piece in enumerate(pieces):
                if k:
                    out.append("".join(cur))
                    cur = []
                cur.append(piece)
                in_word = True
            if value[-1:].isspace() and in_word:
                out.append("".join(cur))
                cur, in_word = [], False
            continue
        elif quote == '"':
            if c == '"':
                quote = ""
            elif c == "\\" and i + 1 < n and statement[i + 1] in '"\\$':
                i += 1
                cur.append(statement[i])
            else:
                cur.append(c)
        elif c in "'\"":
            quote = c
            in_word = True
        elif c == "\\" and i + 1 < n:
            i += 1
            cur.append(statement[i])
            in_word = True
        elif c in " \t\n":
            if in_word:
                out.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if quote:
        raise GrubConfigError(f"unterminated {quote} quote in grub.cfg: {statement.strip()!r}")
    if in_word:
        out.append("".join(cur))
    return out


def _variable_at(text: str, i: int) -> tuple[str, int] | None:
    """The variable name after a '$' at ``i`` and the index after it, or None (a bare '$')."""
    if i >= len(text):
        return None
    if text[i] == "{":
        close = text.find("}", i)
        if close < 0 or not _NAME.fullmatch(text[i + 1:close]):
            return None
        return text[i + 1:close], close + 1
    m = _NAME.match(text, i)
    return (m.group(0), m.end()) if m else None


# --- statements ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Statement:
    line: int
    text: str
    head: str       # the first word as written (keywords are never expanded)
    opens: bool     # ends with a '{' word: a block follows


def _statements(text: str) -> list[_Statement]:
    """The script split into statements: at newlines and ';' outside quotes, '#' comments
    dropped, ``then``/``else``/``do`` split from the command that follows them."""
    out: list[_Statement] = []
    cur: list[str] = []
    quote = ""
    word_start = True
    line = 1
    start: int | None = None     # the line the statement began on

    def emit() -> None:
        statement = "".join(cur).strip()
        cur.clear()
        first = start or line
        while statement:
            m = _LEADING_KEYWORD.fullmatch(statement)
            if m:
                out.append(_Statement(first, m.group(1), m.group(1), False))
                statement = m.group(2)
                continue
            raw = words(statement)
            if raw:
                out.append(_Statement(first, statement, raw[0], raw[-1] == "{" and statement.endswith("{")))
            break

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if start is None and not c.isspace():
            start = line
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < n:
                cur.append(c)
                i += 1
                c = text[i]
            if c == "\n":
                line += 1
            cur.append(c)
        elif c == "\\" and i + 1 < n:
            if text[i + 1] == "\n":     # the statement goes on on the next line
                line += 1
            else:
                cur.append(text[i:i + 2])
            i += 1
            word_start = False
        elif c in "'\"":
            quote = c
            cur.append(c)
            word_start = False
        elif c == "#" and word_start:
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif c in ";\n":
            if quote == "":
                emit()
            start = None
            if c == "\n":
                line += 1
            word_start = True
        else:
            cur.append(c)
            word_start = c in " \t"
        i += 1
    if quote:
        raise GrubConfigError(f"grub.cfg line {start}: a {quote} quote is never closed")
    emit()
    return out


# --- running the script ------------------------------------------------------------------------------


@dataclass
class _Pending:
    """A menuentry or submenu the script defined; its body runs once the script has ended."""

    kind: str
    title: str
    entry_id: str | None
    path: tuple[int, ...]
    body: list[_Statement]


@dataclass
class _IfFrame:
    outer_active: bool
    taken: bool         # a branch was taken (later elif/else are not)
    active: bool


class _Script:
    def __init__(self, grubenv: Mapping[str, str] | None, files: FileStat | None, prefix: str) -> None:
        self.grubenv = dict(grubenv or {})
        self.files = files
        self.prefix = prefix

    def menu(self, statements: list[_Statement], variables: dict[str, str], path: tuple[int, ...],
             depth: int) -> list[MenuEntry]:
        """Run a menu's statements (the script, or a submenu's body) and then its entries'
        and submenus' bodies, each on a copy of the variables the menu ended with."""
        pending: list[_Pending] = []
        self._run(statements, variables, path, pending, None)
        entries: list[MenuEntry] = []
        for item in pending:
            local = dict(variables)
            if item.kind == "submenu":
                if depth >= MAX_SUBMENU_DEPTH:
                    raise GrubConfigError(f"grub.cfg nests submenus deeper than {MAX_SUBMENU_DEPTH}")
                entries += self.menu(item.body, local, item.path, depth + 1)
            else:
                entry = _EntryBuilder(item.title, item.path, item.entry_id)
                self._run(item.body, local, item.path, [], entry)
                if entry.kernel is not None:
                    entries.append(entry.build())
        return entries

    def _run(self, statements: list[_Statement], variables: dict[str, str], path: tuple[int, ...],
             pending: list[_Pending], entry: _EntryBuilder | None) -> None:
        """Run ``statements``: a menu's (``entry`` None: menuentry/submenu are collected into
        ``pending``) or an entry's body (its linux/initrd lines go into ``entry``)."""
        frames: list[_IfFrame] = []
        index = 0
        i = 0
        while i < len(statements):
            s = statements[i]
            i += 1
            active = frames[-1].active if frames else True     # a branch is active only in an active one
            if s.opens:
                body, i = _block(statements, i, s)
                if not active:
                    continue
                if s.head in ("menuentry", "submenu"):
                    argv = words(s.text, variables)[1:-1]
                    title, entry_id = _title_and_id(argv)
                    if entry is None:
                        pending.append(_Pending(s.head, title, entry_id, path + (index,), body))
                        index += 1
                    # a menuentry inside an entry's body is defined when it runs: not in this menu
                continue
            if s.head in ("for", "while", "until"):
                i = _loop_end(statements, i, s)
                continue
            if s.head == "}":
                raise GrubConfigError(f"grub.cfg line {s.line}: '}}' closes no block")
            if s.head == "if":
                taken = active and self._condition(s, variables)
                frames.append(_IfFrame(active, taken, taken))
            elif s.head == "elif":
                frame = _frame(frames, s)
                frame.active = frame.outer_active and not frame.taken and self._condition(s, variables)
                frame.taken = frame.taken or frame.active
            elif s.head == "else":
                frame = _frame(frames, s)
                frame.active = frame.outer_active and not frame.taken
                frame.taken = True
            elif s.head == "fi":
                _frame(frames, s)
                frames.pop()
            elif s.head == "done":
                raise GrubConfigError(f"grub.cfg line {s.line}: 'done' closes no loop")
            elif s.head in ("then", "do"):
                pass        # what follows is the branch, or a loop's body
            elif s.head in ("menuentry", "submenu"):
                raise GrubConfigError(f"grub.cfg line {s.line}: {s.head} without '{{' at the end of its line")
            elif active:
                self._command(words(s.text, variables), variables, entry)
        if frames:
            raise GrubConfigError("grub.cfg ends inside an 'if': a 'fi' is missing")

    def _command(self, argv: list[str], variables: dict[str, str], entry: _EntryBuilder | None) -> None:
        if not argv:
            return
        head = argv[0]
        status = 0
        if head == "set" and len(argv) >= 2 and "=" in argv[1]:
            name, _, value = argv[1].partition("=")
            variables[name] = value
        elif _ASSIGNMENT.match(head):
            name, _, value = head.partition("=")
            variables[name] = value
        elif head == "unset":
            for name in argv[1:]:
                variables.pop(name, None)
        elif head == "load_env":
            status = 0 if self._load_env(argv[1:], variables) else 1
        elif head in ("[", "test", "true", "false"):
            status = 0 if self._test(argv) else 1
        elif entry is not None and head in LINUX_COMMANDS and len(argv) >= 2:
            entry.kernel = _strip_device(argv[1])
            entry.args = " ".join(argv[2:])
        elif entry is not None and head in INITRD_COMMANDS and len(argv) >= 2:
            entry.initrds = tuple(_strip_device(a) for a in argv[1:])
        elif head not in ("export", "save_env", "insmod", "echo"):
            status = 1      # a command pygrub does not run: failed, as one GRUB lacks
        variables["?"] = str(status)

    def _load_env(self, args: list[str], variables: dict[str, str]) -> bool:
        """``load_env [-f FILE] [--skip-sig] [NAME...]``: grubenv's variables (only those
        named, if any), when FILE is the grubenv beside grub.cfg; whether it loaded."""
        file = f"{self.prefix}/grubenv"
        names: list[str] = []
        rest = list(args)
        while rest:
            arg = rest.pop(0)
            if arg in ("-f", "--file") and rest:
                file = rest.pop(0)
            elif arg.startswith("--file="):
                file = arg.split("=", 1)[1]
            elif not arg.startswith("-"):
                names.append(arg)
        if _strip_device(file).rstrip("/") != f"{self.prefix}/grubenv" or not self._file_test("-s", file):
            return False
        for name, value in self.grubenv.items():
            if not names or name in names:
                variables[name] = value
        return True

    def _condition(self, s: _Statement, variables: dict[str, str]) -> bool:
        argv = words(s.text, variables)[1:]     # after if/elif
        self._command(argv, variables, None)
        return variables.get("?") == "0"

    def _test(self, argv: list[str]) -> bool:
        """``[ ... ]``/``test ...``/``true``/``false`` as GRUB's test command evaluates them.

        GRUB reads the words left to right and never fails on a malformed expression:
        a word that is no operator is true if not empty, words in a row are and-ed, ``!``
        inverts the next test, ``-o`` starts an alternative, ``( ... )`` nests, a missing
        ``]`` is forgiven, and ``[ ]`` is true."""
        head, args = argv[0], argv[1:]
        if head in ("true", "false"):
            return head == "true"
        if args and args[-1] == "]":
            args = args[:-1]
        return self._expression(args, [0], 0)

    def _expression(self, args: list[str], at: list[int], depth: int) -> bool:
        """The expression from ``at[0]`` up to its ')' or the end; ``at[0]`` moves past it."""
        if depth > MAX_TEST_DEPTH:
            raise GrubConfigError(f"grub.cfg: a test nests parentheses deeper than {MAX_TEST_DEPTH}")
        any_, all_, invert = False, True, False

        def value(v: bool) -> None:
            nonlocal all_, invert
            all_ = all_ and (v != invert)
            invert = False

        while at[0] < len(args):
            i = at[0]
            a = args[i]
            if i + 2 < len(args) and args[i + 1] in _BINARY:
                value(_BINARY[args[i + 1]](a, args[i + 2]))
                at[0] += 3
            elif i + 2 < len(args) and args[i + 1][:3] in ("-nt", "-ot"):
                value(self._newer(a, args[i + 1], args[i + 2]))
                at[0] += 3
            elif i + 1 < len(args) and a in ("-d", "-e", "-f", "-s"):
                value(self._file_test(a, args[i + 1]))
                at[0] += 2
            elif i + 1 < len(args) and a in ("-n", "-z"):
                value((args[i + 1] != "") == (a == "-n"))
                at[0] += 2
            elif a == ")":
                at[0] += 1
                return any_ or all_
            elif a == "(":
                at[0] += 1
                value(self._expression(args, at, depth + 1))
            elif a == "!":
                invert = not invert
                at[0] += 1
            elif a == "-a":
                at[0] += 1      # and-ing is what words in a row do anyway
            elif a == "-o":
                any_, all_ = any_ or all_, True
                at[0] += 1
            else:
                value(a != "")
                at[0] += 1
        return any_ or all_

    def _newer(self, first: str, op: str, second: str) -> bool:
        """``A -ntBIAS B`` / ``A -otBIAS B``: by modification time, BIAS seconds added to A's."""
        a, b = self._stat(first), self._stat(second)
        bias = _number(op[3:]) if op[3:] else 0
        if op.startswith("-nt"):
            return (a is not None and b is None) or (a is not None and b is not None and a[2] + bias > b[2])
        return (a is None and b is not None) or (a is not None and b is not None and a[2] + bias < b[2])

    def _stat(self, path: str) -> tuple[int, int, int] | None:
        path = _strip_device(path)
        if self.files is None or not path.startswith("/"):
            return None
        return self.files(path)

    def _file_test(self, op: str, path: str) -> bool:
        found = self._stat(path)
        if found is None:
            return False
        mode = found[0]
        if op == "-s":      # GRUB opens the file: a directory has no size
            return stat.S_ISREG(mode) and found[1] > 0
        return {"-e": True, "-f": not stat.S_ISDIR(mode), "-d": stat.S_ISDIR(mode)}[op]


def _number(text: str) -> int:
    """A number as GRUB's test reads one (C's strtoul, base 0): an optional '-', then 0x for hex
    or 0 for octal, as many digits as there are; none is 0."""
    negative = text.startswith("-")
    text = text[1:] if negative else text
    base = 10
    if text[:2].lower() == "0x":
        base, text = 16, text[2:]
    elif text.startswith("0"):
        base = 8
    digits = "0123456789abcdef"[:base]
    n = 0
    for c in text.lower():
        if c not in digits:
            break
        n = n * base + digits.index(c)
    return -n if negative else n


def _prefix_numbers(a: str, b: str) -> tuple[int, int]:
    """GRUB's -pgt/-plt operands: the numbers from where the digits before their common
    prefix's end begin ("vmlinuz-2" and "vmlinuz-11": 2 and 11)."""
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    start = common
    while start > 0 and a[start - 1].isdigit():
        start -= 1
    return _number(a[start:]), _number(b[start:])


_BINARY: dict[str, Callable[[str, str], bool]] = {
    "=": lambda a, b: a == b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "-eq": lambda a, b: _number(a) == _number(b), "-ne": lambda a, b: _number(a) != _number(b),
    "-lt": lambda a, b: _number(a) < _number(b), "-le": lambda a, b: _number(a) <= _number(b),
    "-gt": lambda a, b: _number(a) > _number(b), "-ge": lambda a, b: _number(a) >= _number(b),
    "-pgt": lambda a, b: operator.gt(*_prefix_numbers(a, b)),
    "-plt": lambda a, b: operator.lt(*_prefix_numbers(a, b)),
}


def _frame(frames: list[_IfFrame], s: _Statement) -> _IfFrame:
    if not frames:
        raise GrubConfigError(f"grub.cfg line {s.line}: {s.head!r} without an 'if'")
    return frames[-1]


def _block(statements: list[_Statement], i: int, opener: _Statement) -> tuple[list[_Statement], int]:
    """The statements of the ``{ ... }`` block opened just before ``i``, and the index after its '}'."""
    depth = 1
    start = i
    while i < len(statements):
        s = statements[i]
        if s.opens:
            depth += 1
        elif s.head == "}":
            depth -= 1
            if depth == 0:
                return statements[start:i], i + 1
        i += 1
    what = opener.head if opener.head in ("menuentry", "submenu", "function") else "block"
    raise GrubConfigError(f"grub.cfg ends inside the {what} of line {opener.line}: a '}}' is missing")


def _loop_end(statements: list[_Statement], i: int, opener: _Statement) -> int:
    depth = 1
    while i < len(statements):
        head = statements[i].head
        if head in ("for", "while", "until"):
            depth += 1
        elif head == "done":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise GrubConfigError(f"grub.cfg ends inside the {opener.head} loop of line {opener.line}: a 'done' is missing")


class _EntryBuilder:
    def __init__(self, title: str, path: tuple[int, ...], entry_id: str | None) -> None:
        self.title = title
        self.path = path
        self.entry_id = entry_id
        self.kernel: str | None = None
        self.initrds: tuple[str, ...] = ()
        self.args = ""

    def build(self) -> MenuEntry:
        return MenuEntry(self.title, self.path, self.entry_id, self.kernel, self.initrds, self.args)


def _title_and_id(args: list[str]) -> tuple[str, str | None]:
    """menuentry/submenu's title (its first argument that is no option) and ``--id``."""
    title: str | None = None
    entry_id: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--id="):
            entry_id = arg[5:]
        elif arg in ("--id", "--class", "--users", "--hotkey") and i + 1 < len(args):
            if arg == "--id":
                entry_id = args[i + 1]
            i += 1
        elif arg.startswith("--"):
            pass
        elif title is None:
            title = arg
        i += 1
    return (title or ""), entry_id


def _strip_device(path: str) -> str:
    return _DEVICE.sub("", path)


__all__ = ["GRUB_FEATURES", "GrubConfigError", "GrubMenu", "MenuEntry", "PLATFORM", "builtin_variables",
           "parse", "parse_grubenv", "words"]
