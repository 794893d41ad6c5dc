"""xl domain configuration files (xl.cfg(5)): the grammar, and typed access to values.

This module reads the language, not its meaning: :mod:`hospes.toolstack.spec`
turns the values into a ``DomainSpec``. Nothing is ever evaluated as Python.

Grammar (the facts of Xen's ``tools/libs/util/libxlu_cfg_y.y``, re-expressed)::

    file       := { stmt } [ assignment ]        -- the last line needs no newline
    stmt       := assignment endstmt | endstmt
    assignment := IDENT "=" value | IDENT "+=" value
    endstmt    := NEWLINE | ";"
    value      := atom | "[" nl* [ values [ "," nl* ] ] "]"
    values     := value nl* { "," nl* value nl* }  -- lists nest; a trailing comma is fine
    atom       := STRING | NUMBER

Tokens (``libxlu_cfg_l.l``)::

    IDENT    [a-z][._0-9a-z]*          keys are lower case
    NUMBER   [0-9][0-9a-fx]*           kept as source text; as a number it means what
                                       C strtol(text, base 0) means: 0x1f hex, 010 octal
    STRING   '...' or "..."            one line; escapes \\' \\" \\\\ \\a \\b \\f \\n \\r \\t \\v,
                                       \\xHH (two hex digits) and \\o, \\oo, \\ooo (octal)
    NEWLINE  a newline, or a "#" comment through the end of its line
    " " and tab separate tokens; any other character is an error.

Meaning of the settings (``libxlu_cfg.c``):

* ``KEY = VALUE`` sets KEY; a later setting of the same key replaces it.
* ``KEY += VALUE`` appends to the current value: a list to a list, an atom's text
  to an atom's text (``name = "vm"; name += "-1"`` gives ``"vm-1"``); mixing a
  list and an atom is an error. On an absent key it just sets it. A value built by
  ``+=`` cannot be used as a number (xl: "can't use += with numbers").
* Strings and numbers are both atoms: a key that wants a number accepts
  ``"512"``, a key that wants a string accepts ``42`` (as its source text).

Values are small frozen dataclasses that remember where they were written:
:class:`String`, :class:`Number`, :class:`List`. ``parse()`` returns
``dict[str, Value]``; :func:`to_plain` turns a value into ``str | int | list``.
The accessors :func:`as_str`, :func:`as_int`, :func:`as_list` and
:func:`as_str_list` mirror libxlu's ``xlu_cfg_get_*`` and raise a
:class:`ConfigError` that points at the offending value.

Deviations from xl, all on the side of clearer errors:

* errors stop at the first one (xl reports several and then fails);
* a ``#`` comment on the last line needs no newline (xl's lexer rejects it);
* ``\\xHH`` and octal escapes produce the character they name; xl's lexer accepts
  them but its dequoting drops them (``\\x..`` always fails, octal yields nothing);
  a NUL character is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hospes.errors import HospesError

#: The largest and smallest values C's strtol accepts on LP64 (xl reads numbers as long).
LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)
#: Lists nested deeper than this are refused (the grammar allows any depth).
MAX_NESTING = 64


@dataclass(frozen=True)
class Location:
    """Where a token starts: ``filename:line:column`` (1-based; 0 = unknown)."""

    filename: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if not self.line:
            return self.filename
        if not self.column:
            return f"{self.filename}:{self.line}"
        return f"{self.filename}:{self.line}:{self.column}"


class ConfigError(HospesError):
    """A configuration that cannot be read; the text is ``filename:line:column: message``.

    ``location`` is the :class:`Location` (None when there is no file at all) and
    ``message`` the bare message.
    """

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location is not None else message)


@dataclass(frozen=True)
class String:
    """A quoted string, unescaped. ``appended`` marks a value built by ``+=``."""

    text: str
    location: Location
    appended: bool = False


@dataclass(frozen=True)
class Number:
    """A NUMBER token, kept as its source text (``"0x1f"``, ``"010"``, ``"512"``).

    ``value`` is its C strtol(base 0) meaning, or None when the text is not a valid
    number (the lexer accepts ``12ab``; xl only objects when a key wants a number).
    """

    text: str
    location: Location
    appended: bool = False

    @property
    def value(self) -> int | None:
        try:
            return c_strtol(self.text)
        except ValueError:
            return None


@dataclass(frozen=True)
class List:
    """A ``[ ... ]`` list; items are atoms or lists, each with its own location."""

    items: tuple["Value", ...]
    location: Location
    appended: bool = False


Value = String | Number | List
Atom = String | Number
Plain = str | int | list  # what to_plain() returns (lists of Plain)


# --------------------------------------------------------------------------- numbers

_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def c_strtol(text: str) -> int:
    """``text`` as C ``strtol(text, &end, 0)`` reads it, all of it consumed.

    Leading blanks and a sign are allowed; ``0x`` starts hex, ``0`` starts octal.
    Raises ValueError("invalid") or ValueError("out of range") like xl's checks.
    """
    m = _STRTOL.fullmatch(text)
    if not m:
        raise ValueError("invalid")
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        n = int(digits[2:], 16)
    elif digits.startswith("0"):
        n = int(digits, 8)
    else:
        n = int(digits, 10)
    if m.group(1) == "-":
        n = -n
    if not LONG_MIN <= n <= LONG_MAX:
        raise ValueError("out of range")
    return n


# --------------------------------------------------------------------------- lexer

@dataclass(frozen=True)
class _Token:
    kind: str          # ident number string newline eof = += ; , [ ]
    text: str          # the value (unescaped for strings)
    source: str        # the source text, for messages
    location: Location


_IDENT = re.compile(r"[a-z][._0-9a-z]*")
_NUMBER = re.compile(r"[0-9][0-9a-fx]*")
_SIMPLE_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
                   "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_PUNCTUATION = {"=": "=", ";": ";", ",": ",", "[": "[", "]": "]"}


class _Lexer:
    def __init__(self, text: str, filename: str, first_line: int) -> None:
        self.text = text
        self.filename = filename
        self.pos = 0
        self.line = first_line
        self.line_start = 0

    def where(self, pos: int) -> Location:
        return Location(self.filename, self.line, pos - self.line_start + 1)

    def error(self, pos: int, message: str) -> ConfigError:
        return ConfigError(message, self.where(pos))

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        text, n = self.text, len(self.text)
        while True:
            while self.pos < n and text[self.pos] in " \t":
                self.pos += 1
            if self.pos >= n:
                out.append(_Token("eof", "", "end of file", self.where(self.pos)))
                return out
            start, ch = self.pos, text[self.pos]
            if ch == "\n" or ch == "#":
                end = text.find("\n", start)
                out.append(_Token("newline", "", "end of line", self.where(start)))
                self.pos = n if end < 0 else end + 1
                self.line += 1
                self.line_start = self.pos
                continue
            if "a" <= ch <= "z":
                m = _IDENT.match(text, start)
                assert m
                out.append(_Token("ident", m.group(), f"'{m.group()}'", self.where(start)))
                self.pos = m.end()
            elif "0" <= ch <= "9":
                m = _NUMBER.match(text, start)
                assert m
                out.append(_Token("number", m.group(), f"'{m.group()}'", self.where(start)))
                self.pos = m.end()
            elif ch in "'\"":
                out.append(self._string(start, ch))
            elif text.startswith("+=", start):
                out.append(_Token("+=", "+=", "'+='", self.where(start)))
                self.pos += 2
            elif ch in _PUNCTUATION:
                out.append(_Token(ch, ch, f"'{ch}'", self.where(start)))
                self.pos += 1
            else:
                raise self.error(start, self._bad_character(ch))

    @staticmethod
    def _bad_character(ch: str) -> str:
        if ch == "\r":
            return ("Unexpected carriage return: the file has DOS (CRLF) line endings; "
                    "convert it with dos2unix")
        shown = repr(ch)
        if ch in "+-.():":
            return (f"Unexpected character {shown}: xl configuration files are not Python; "
                    "values are quoted strings, numbers or [lists] (negative numbers and "
                    "expressions must be written as strings)")
        if "A" <= ch <= "Z":
            return (f"Unexpected character {shown}: keys are lower case, hex digits are lower "
                    "case (0x1f), and other text must be quoted")
        return f"Unexpected character {shown}: write settings as KEY = VALUE and quote strings"

    def _string(self, start: int, quote: str) -> _Token:
        text, n = self.text, len(self.text)
        i = start + 1
        while i < n and text[i] != quote and text[i] != "\n":
            i += 2 if text[i] == "\\" and i + 1 < n and text[i + 1] != "\n" else 1
        if i >= n or text[i] != quote:
            raise self.error(start, f"Unterminated string: close it with {quote} on the same line "
                                    "(strings cannot span lines)")
        raw = text[start:i + 1]
        self.pos = i + 1
        return _Token("string", self._unescape(start, raw), raw, self.where(start))

    def _unescape(self, start: int, raw: str) -> str:
        out: list[str] = []
        body, i = raw[1:-1], 0
        while i < len(body):
            c = body[i]
            if c != "\\":
                out.append(c)
                i += 1
                continue
            nc = body[i + 1]
            at = start + 1 + i
            if nc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nc])
                i += 2
                continue
            if nc == "x":
                digits = body[i + 2:i + 4]
                if not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
                    raise self.error(at, "Invalid \\x escape in a quoted string: give two hex "
                                         "digits, e.g. \\x41")
                code, i = int(digits, 16), i + 4
            elif "0" <= nc <= "7":
                m = re.match(r"[0-7]{1,3}", body[i + 1:])
                assert m
                code, i = int(m.group(), 8), i + 1 + m.end()
                if code > 0o377:
                    raise self.error(at, f"Octal escape \\{m.group()} is out of range: the "
                                         "largest is \\377")
            else:
                raise self.error(at, f"Invalid escape \\{nc} in a quoted string: write \\\\ for a "
                                     "backslash")
            if code == 0:
                raise self.error(at, "A string cannot contain a NUL character")
            out.append(chr(code))
        return "".join(out)


# --------------------------------------------------------------------------- parser

@dataclass(frozen=True)
class Setting:
    """One ``KEY = VALUE`` or ``KEY += VALUE`` statement."""

    key: str
    op: str            # "=" or "+="
    value: Value
    location: Location


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def skip_newlines(self) -> None:
        while self.tok.kind == "newline":
            self.i += 1

    def settings(self) -> list[Setting]:
        out: list[Setting] = []
        while self.tok.kind != "eof":
            if self.tok.kind in ("newline", ";"):
                self.advance()
                continue
            if self.tok.kind != "ident":
                raise ConfigError(f"Expected a setting KEY = VALUE, found {self.tok.source}",
                                  self.tok.location)
            setting = self.assignment()
            out.append(setting)
            if self.tok.kind == "eof":
                break
            if self.tok.kind not in ("newline", ";"):
                raise ConfigError(f"Expected a newline or ';' after the value of '{setting.key}', "
                                  f"found {self.tok.source}", self.tok.location)
            self.advance()
        return out

    def assignment(self) -> Setting:
        key = self.advance()
        if self.tok.kind not in ("=", "+="):
            raise ConfigError(f"Expected '=' or '+=' after '{key.text}', found {self.tok.source}",
                              self.tok.location)
        op = self.advance().kind
        return Setting(key.text, op, self.value(key.text, 0), key.location)

    def value(self, key: str, depth: int) -> Value:
        tok = self.tok
        if tok.kind == "string":
            self.advance()
            return String(tok.text, tok.location)
        if tok.kind == "number":
            self.advance()
            return Number(tok.text, tok.location)
        if tok.kind == "[":
            return self.list(key, depth + 1)
        hint = f"; quote strings: {key} = \"{tok.text}\"" if tok.kind == "ident" else ""
        raise ConfigError(f"Expected a value for '{key}' (a quoted string, a number or a [list]), "
                          f"found {tok.source}{hint}", tok.location)

    def list(self, key: str, depth: int) -> List:
        opening = self.advance()
        if depth > MAX_NESTING:
            raise ConfigError(f"Lists are nested more than {MAX_NESTING} deep", opening.location)
        items: list[Value] = []
        self.skip_newlines()
        while self.tok.kind != "]":
            items.append(self.value(key, depth))
            self.skip_newlines()
            if self.tok.kind == ",":
                self.advance()
                self.skip_newlines()
            elif self.tok.kind != "]":
                raise ConfigError(f"Expected ',' or ']' in the list of '{key}' opened at "
                                  f"line {opening.location.line}, found {self.tok.source}",
                                  self.tok.location)
        self.advance()
        return List(tuple(items), opening.location)


def parse_settings(text: str, filename: str = "<config>", first_line: int = 1) -> list[Setting]:
    """The statements of ``text`` in order, before ``=``/``+=`` are applied."""
    return _Parser(_Lexer(text, filename, first_line).tokens()).settings()


def apply(values: dict[str, Value], setting: Setting) -> None:
    """Apply one setting to ``values`` in place, with xl's ``=`` and ``+=`` meaning."""
    new = setting.value
    if setting.op == "=":
        values[setting.key] = new
        return
    old = values.get(setting.key)
    if old is None:
        values[setting.key] = _mark_appended(new)
    elif isinstance(old, List) and isinstance(new, List):
        values[setting.key] = List(old.items + new.items, new.location, appended=True)
    elif not isinstance(old, List) and not isinstance(new, List):
        kind = Number if isinstance(old, Number) and isinstance(new, Number) else String
        values[setting.key] = kind(old.text + new.text, new.location, appended=True)
    else:
        have = "a list" if isinstance(old, List) else "a single value"
        raise ConfigError(f"Cannot add a list to a single value or the reverse: '{setting.key}' is "
                          f"{have} (set at {old.location})", setting.location)


def _mark_appended(value: Value) -> Value:
    if isinstance(value, List):
        return List(value.items, value.location, appended=True)
    return type(value)(value.text, value.location, appended=True)


def parse(text: str, filename: str = "<config>") -> dict[str, Value]:
    """Parse an xl configuration file into ``{key: value}``, in first-setting order.

    Raises :class:`ConfigError` (``filename:line:column: message``) on the first
    lexical or syntax error.
    """
    values: dict[str, Value] = {}
    for setting in parse_settings(text, filename):
        apply(values, setting)
    return values


def parse_overrides(overrides: Sequence[str], base: Mapping[str, Value] | None = None,
                    filename: str = "<command line>") -> dict[str, Value]:
    """Apply ``xl create cfg KEY=VALUE...`` overrides on top of ``base``.

    Each override is one setting in the file's grammar (so strings are quoted:
    ``name="web1"``, and ``disk+=['...']`` appends to the file's list), applied
    after the file as xl does. Errors point at ``<command line>:N:column`` where N
    is the override's position (xl parses them as the lines of one more file).
    Returns a new dict; ``base`` is not modified.
    """
    values = dict(base or {})
    for n, text in enumerate(overrides, 1):
        if "\n" in text:
            raise ConfigError(f"Override {text!r} spans lines: give one KEY=VALUE per argument",
                              Location(filename, n))
        settings = parse_settings(text, filename, first_line=n)
        if len(settings) != 1:
            what = "no setting" if not settings else f"{len(settings)} settings"
            raise ConfigError(f"Override {text!r} has {what}: give exactly one KEY=VALUE per "
                              "argument", Location(filename, n))
        apply(values, settings[0])
    return values


# --------------------------------------------------------------------------- typed access

def to_plain(value: Value) -> Plain:
    """``value`` as plain Python: strings, ints (numbers with a valid value), lists."""
    if isinstance(value, List):
        return [to_plain(v) for v in value.items]
    if isinstance(value, Number) and value.value is not None:
        return value.value
    return value.text


def from_plain(obj: object, location: Location) -> Value:
    """The value an xl file would give for ``obj`` (str, int, or list/tuple of them)."""
    if isinstance(obj, (String, Number, List)):
        return obj
    if isinstance(obj, bool):
        return Number("1" if obj else "0", location)
    if isinstance(obj, int):
        return Number(str(obj), location)
    if isinstance(obj, str):
        return String(obj, location)
    if isinstance(obj, (list, tuple)):
        return List(tuple(from_plain(v, location) for v in obj), location)
    raise ConfigError(f"A configuration value must be a string, a number or a list, not "
                      f"{type(obj).__name__}", location)


def as_str(value: Value, key: str) -> str:
    """The text of a single value (a number gives its source text)."""
    if isinstance(value, List):
        raise ConfigError(f"'{key}' must be a single value, not a list", value.location)
    return value.text


def as_int(value: Value, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """A single value read as a C long (strtol base 0), optionally bounded."""
    text = as_str(value, key)
    if value.appended:
        raise ConfigError(f"Cannot use += with numbers: set '{key}' with =", value.location)
    try:
        n = c_strtol(text)
    except ValueError as e:
        if str(e) == "out of range":
            raise ConfigError(f"'{key}' = {text} is out of range", value.location) from None
        raise ConfigError(f"'{key}' must be a number (decimal, 0x hex or 0 octal), not {text!r}",
                          value.location) from None
    if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
        if minimum is not None and maximum is not None:
            bounds = f"between {minimum} and {maximum}"
        elif minimum is not None:
            bounds = f"at least {minimum}"
        else:
            bounds = f"at most {maximum}"
        raise ConfigError(f"'{key}' is {n}; it must be {bounds}", value.location)
    return n


def as_list(value: Value, key: str) -> List:
    """A list value; a single value is an error that shows the list syntax."""
    if not isinstance(value, List):
        raise ConfigError(f"'{key}' must be a list, e.g. {key} = [ '...' ], not a single value",
                          value.location)
    return value


def as_str_list(value: Value, key: str) -> list[tuple[str, Location]]:
    """A list of atoms as ``(text, location)`` pairs; nested lists are an error.

    (xl stops silently at the first item that is not a string; Hospes refuses it.)
    """
    out = []
    for item in as_list(value, key).items:
        if isinstance(item, List):
            raise ConfigError(f"Items of '{key}' must be strings, not lists", item.location)
        out.append((item.text, item.location))
    return out


__all__ = [
    "Atom", "ConfigError", "List", "Location", "Number", "Plain", "Setting", "String", "Value",
    "apply", "as_int", "as_list", "as_str", "as_str_list", "c_strtol", "from_plain",
    "parse", "parse_overrides", "parse_settings", "to_plain",
]
