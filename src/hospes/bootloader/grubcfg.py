"""What a ``grub.cfg`` boots: its menu entries and which one is the default.

This reads the subset of GRUB's script language that configuration generators
(``update-grub``/``grub-mkconfig``, and people writing one by hand) use to
describe a menu, as Xen's pygrub does: ``menuentry`` and ``submenu`` blocks,
``linux``/``initrd`` lines in them, ``set var=value`` and ``$var``/``${var}`` in
values, ``set default=...`` (an index, an ``N>M`` path into a submenu, an entry's
title or ``--id``, or ``${saved_entry}`` from ``grubenv``). Everything else
(``if``, ``insmod``, ``search``, ``load_video`` ...) is skipped; blocks are
still matched, so an ``if ... fi`` around entries does not hide them.

Paths on ``linux``/``initrd`` lines may start with a GRUB device, ``(hd0,gpt2)/vmlinuz``;
the device is dropped and the path is taken on the filesystem that holds grub.cfg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hospes.errors import HospesError

#: Commands that load a kernel / initrds (BIOS, 16-bit and EFI spellings).
LINUX_COMMANDS = frozenset({"linux", "linux16", "linuxefi", "kernel"})
INITRD_COMMANDS = frozenset({"initrd", "initrd16", "initrdefi"})
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
_DEVICE = re.compile(r"^\([^)]*\)")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


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


def words(line: str) -> list[str]:
    """Split one line into words with GRUB's quoting: '...', "...", backslash escapes.

    Variables are left unexpanded (marked by a leading ``$`` in the raw text); the
    caller expands them where values are used."""
    out: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(line):
        c = line[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                cur.append(c)
        elif quote == '"':
            if c == '"':
                quote = ""
            elif c == "\\" and i + 1 < len(line) and line[i + 1] in '"\\$':
                i += 1
                cur.append(line[i])
            else:
                cur.append(c)
        elif c in "'\"":
            quote = c
            in_word = True
        elif c == "\\" and i + 1 < len(line):
            i += 1
            cur.append(line[i])
            in_word = True
        elif c == "#" and not in_word:
            break
        elif c in " \t":
            if in_word:
                out.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if quote:
        raise GrubConfigError(f"unterminated {quote} quote in grub.cfg line: {line.strip()!r}")
    if in_word:
        out.append("".join(cur))
    return out


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines joined where a quote spans a line break, with their first line number."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        pending = f"{pending}\n{line}" if pending else line
        try:
            words(pending)
        except GrubConfigError:
            continue   # an open quote: the value goes on on the next line
        out.append((start, pending))
        pending = ""
    if pending:
        words(pending)  # raises: the quote never closes
    return out


def parse(text: str, env: dict[str, str] | None = None) -> GrubMenu:
    """Read grub.cfg ``text``; ``env`` holds grubenv's variables (saved_entry ...)."""
    menu = GrubMenu(variables=dict(env or {}))
    # stack of open blocks: ("menuentry", builder) | ("submenu", path) | ("other", None)
    stack: list[tuple[str, object]] = []
    counters = [0]   # next index at each open menu level
    for number, line in _logical_lines(text):
        for statement in _statements(line):
            argv = words(statement)
            if not argv:
                continue
            head = argv[0]
            if head in ("menuentry", "submenu"):
                if argv[-1] != "{":
                    raise GrubConfigError(f"grub.cfg line {number}: {head} without '{{' at the end of its line")
                title, entry_id = _title_and_id(argv[1:-1], menu.variables)
                path = tuple(_menu_path(stack)) + (counters[-1],)
                counters[-1] += 1
                if head == "submenu":
                    stack.append(("submenu", path))
                    counters.append(0)
                else:
                    stack.append(("menuentry", _EntryBuilder(title, path, entry_id)))
            elif head in ("if", "for", "while", "until", "function") or (head.endswith("{") and head != "{"):
                stack.append(("other", None))
            elif head in ("fi", "done", "}"):
                if not stack:
                    raise GrubConfigError(f"grub.cfg line {number}: {head!r} closes no block")
                kind, value = stack.pop()
                if kind == "menuentry":
                    assert isinstance(value, _EntryBuilder)
                    if value.kernel is not None:
                        menu.entries.append(value.build())
                elif kind == "submenu":
                    counters.pop()
            elif (head == "set" and len(argv) >= 2 and "=" in argv[1]) or _ASSIGNMENT.match(head):
                name, _, value = (argv[1] if head == "set" else head).partition("=")
                value = expand(value, menu.variables)
                menu.variables[name] = value
                if name == "default" and not _in_entry(stack):
                    menu.default = value
            elif _in_entry(stack):
                builder = _current_entry(stack)
                if head in LINUX_COMMANDS and len(argv) >= 2:
                    builder.kernel = _strip_device(expand(argv[1], menu.variables))
                    builder.args = " ".join(expand(a, menu.variables) for a in argv[2:])
                elif head in INITRD_COMMANDS and len(argv) >= 2:
                    builder.initrds = tuple(_strip_device(expand(a, menu.variables)) for a in argv[1:])
    if any(kind in ("menuentry", "submenu") for kind, _ in stack):
        raise GrubConfigError("grub.cfg ends inside a menuentry or submenu: a '}' is missing")
    return menu


def expand(value: str, variables: dict[str, str]) -> str:
    """``$name`` and ``${name}`` replaced by their values ("" when unset), as GRUB does."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def parse_grubenv(text: str) -> dict[str, str]:
    """The variables of a ``grubenv`` block (``name=value`` lines, '#' padding)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        env[name.strip()] = value
    return env


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


def _statements(line: str) -> list[str]:
    """A line split at ';' outside quotes (``if [ x ] ; then``), with ``then``/``else``/``do``
    words dropped: they open no block of their own."""
    parts: list[str] = []
    cur: list[str] = []
    quote = ""
    for c in line:
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == ";":
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(c)
    parts.append("".join(cur))
    out = []
    for part in parts:
        stripped = part.strip()
        for opener in ("then", "else", "do"):
            if stripped == opener or stripped.startswith(opener + " "):
                stripped = stripped[len(opener):].strip()
        if stripped.startswith("elif "):
            continue   # same block as its if
        if stripped:
            out.append(stripped)
    return out


def _title_and_id(args: list[str], variables: dict[str, str]) -> tuple[str, str | None]:
    title: str | None = None
    entry_id: str | None = None
    i = 0
    while i < len(args):
        arg = expand(args[i], variables) if args[i].startswith("$") else args[i]
        if arg.startswith("--id="):
            entry_id = arg[5:]
        elif arg in ("--id", "--class", "--users", "--hotkey") and i + 1 < len(args):
            if arg == "--id":
                entry_id = args[i + 1]
            i += 1
        elif arg == "--id" or arg.startswith("--"):
            pass
        elif args[i] == "$menuentry_id_option" and i + 1 < len(args):
            entry_id = args[i + 1]
            i += 1
        elif title is None:
            title = arg
        i += 1
    return (title or ""), entry_id


def _menu_path(stack: list[tuple[str, object]]) -> list[int]:
    path: list[int] = []
    for kind, value in stack:
        if kind == "submenu":
            assert isinstance(value, tuple)
            path = list(value)
    return path


def _in_entry(stack: list[tuple[str, object]]) -> bool:
    return any(kind == "menuentry" for kind, _ in stack)


def _current_entry(stack: list[tuple[str, object]]) -> _EntryBuilder:
    for kind, value in reversed(stack):
        if kind == "menuentry":
            assert isinstance(value, _EntryBuilder)
            return value
    raise AssertionError("not in a menuentry")


def _strip_device(path: str) -> str:
    return _DEVICE.sub("", path)


__all__ = ["GrubConfigError", "GrubMenu", "MenuEntry", "expand", "parse", "parse_grubenv", "words"]
