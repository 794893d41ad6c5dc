"""Saved state: the one convention every stateful part of Hospes follows.

Save/restore and live migration move a domain by moving the state of each of
its parts, so each part keeps that state apart from its behaviour (as
Firecracker's ``persist`` modules do):

* ``part.save() -> XState``: a frozen dataclass of plain values (ints, strs,
  bytes, bools, enums, tuples and further state dataclasses; never lists,
  dicts, locks, file descriptors or guest memory). Guest memory travels on its
  own, page by page; a part never copies what already lives there.
* ``XPart.restore(state, *, live resources...) -> XPart``: construction with a
  state. What cannot be saved (guest memory, callbacks, file descriptors,
  threads) comes in as keyword arguments, exactly as the constructor takes it.
* Every state class carries ``VERSION`` (a ``ClassVar``) and a ``version``
  field defaulting to it. ``restore`` calls :func:`check_version` first, so a
  record written by a newer Hospes is refused with a message naming the part
  instead of being misread.

:func:`encode` and :func:`decode` turn any such state into JSON-compatible
values and back, so one generic writer serves the save file and the migration
stream.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, ClassVar, Protocol, TypeVar

from hospes.errors import HospesError


class StateError(HospesError):
    """A saved record does not fit the part it is restored into."""


class SavedState(Protocol):
    VERSION: ClassVar[int]

    # A property, so that frozen dataclasses (whose fields mypy sees as
    # read-only) satisfy the protocol.
    @property
    def version(self) -> int: ...


S = TypeVar("S")


def check_version(state: SavedState, what: str) -> None:
    """Refuse a record of a version this code does not read."""
    want = type(state).VERSION
    if state.version != want:
        raise StateError(
            f"The saved {what} is version {state.version}; this Hospes reads version {want}. "
            "Restore it with the Hospes version that saved it, or a newer one."
        )


def encode(value: Any) -> Any:
    """A state dataclass (or any value inside one) as JSON-compatible data.

    Dataclasses become dicts of their fields, tuples lists, bytes a hex
    string, enums their value; ints, strs, bools, floats and None stay.
    """
    kind = type(value)
    if kind is int or kind is str or kind is bool or value is None:
        return value
    if kind is tuple or kind is list:
        # Long tuples of ints (page types, grant entries) dominate a domain's state,
        # and a live migration's downtime includes writing it: no per-item dispatch.
        if all(type(v) is int for v in value):
            return list(value)
        if all(type(v) is tuple and all(type(x) is int for x in v) for v in value):
            return [list(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if value is None or isinstance(value, (int, str, float)):
        return value
    raise StateError(f"A {type(value).__name__} cannot be part of saved state.")


def decode(cls: type[S], data: Any) -> S:
    """Rebuild a state dataclass from :func:`encode`'s output, checking every field's type."""
    return typing.cast(S, _decode(cls, data, cls.__name__))


def _int_items(item: Any, data: list[Any]) -> tuple[Any, ...] | None:
    """``data`` as a tuple of ints or of fixed-size int tuples, if ``item`` asks for that
    and every item fits (checked in bulk); None to take the general path (which also
    names the item that does not fit)."""
    if item is int:
        if all(type(v) is int for v in data):
            return tuple(data)
        return None
    if typing.get_origin(item) is tuple:
        args = typing.get_args(item)
        if args and all(a is int for a in args):
            n = len(args)
            if all(type(v) is list and len(v) == n and all(type(x) is int for x in v) for v in data):
                return tuple(tuple(v) for v in data)
    return None


def _decode(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _decode(arm, data, where)
            except StateError:
                pass
        raise StateError(f"{where}: {data!r} fits none of {tp}")
    if tp is type(None):
        if data is not None:
            raise StateError(f"{where}: expected null, got {data!r}")
        return None
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list):
            raise StateError(f"{where}: expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            fast = _int_items(args[0], data)
            if fast is not None:
                return fast
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise StateError(f"{where}: expected {len(args)} items, got {len(data)}")
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=False)))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise StateError(f"{where}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            if f.name not in data:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise StateError(f"{where}: the field {f.name!r} is missing")
            kwargs[f.name] = _decode(hints[f.name], data[f.name], f"{where}.{f.name}")
        unknown = set(data) - {f.name for f in dataclasses.fields(tp)}
        if unknown:
            raise StateError(f"{where}: unknown fields {sorted(unknown)}")
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError as e:
            raise StateError(f"{where}: {data!r} is not a {tp.__name__}") from e
    if tp is bytes:
        if not isinstance(data, str):
            raise StateError(f"{where}: expected hex bytes, got {type(data).__name__}")
        try:
            return bytes.fromhex(data)
        except ValueError as e:
            raise StateError(f"{where}: {data!r} is not hex") from e
    if tp is bool:
        if not isinstance(data, bool):
            raise StateError(f"{where}: expected a bool, got {data!r}")
        return data
    if tp is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise StateError(f"{where}: expected an integer, got {data!r}")
        return data
    if tp is float:
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            raise StateError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise StateError(f"{where}: expected a string, got {data!r}")
        return data
    if tp is Any:
        return data
    raise StateError(f"{where}: cannot decode a {tp!r}")


__all__ = ["SavedState", "StateError", "check_version", "decode", "encode"]
