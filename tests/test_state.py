"""The saved-state convention: versions are checked, encode/decode round-trip and reject bad records."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from hospes.state import StateError, check_version, decode, encode


class Colour(enum.IntEnum):
    RED = 1
    BLUE = 2


@dataclass(frozen=True)
class Inner:
    VERSION: ClassVar[int] = 1
    name: str
    data: bytes
    version: int = VERSION


@dataclass(frozen=True)
class Outer:
    VERSION: ClassVar[int] = 3
    items: tuple[Inner, ...]
    pair: tuple[int, str]
    colour: Colour
    maybe: int | None
    flag: bool = False
    version: int = VERSION
    extra: tuple[int, ...] = field(default=())


def sample() -> Outer:
    return Outer(items=(Inner("a", b"\x00\xff"), Inner("b", b"")), pair=(7, "x"), colour=Colour.BLUE,
                 maybe=None, flag=True, extra=(1, 2, 3))


def test_a_state_survives_encode_json_and_decode_unchanged():
    state = sample()
    text = json.dumps(encode(state))
    assert decode(Outer, json.loads(text)) == state


def test_decode_names_the_field_that_does_not_fit():
    data = encode(sample())
    data["items"][1]["data"] = 5
    with pytest.raises(StateError, match=r"Outer.items\[1\].data"):
        decode(Outer, data)


def test_decode_refuses_unknown_and_missing_fields():
    data = encode(sample())
    data["surprise"] = 1
    with pytest.raises(StateError, match="unknown fields"):
        decode(Outer, data)
    data = encode(sample())
    del data["pair"]
    with pytest.raises(StateError, match="'pair' is missing"):
        decode(Outer, data)


def test_decode_refuses_a_bool_for_an_int_and_an_unknown_enum_value():
    data = encode(sample())
    data["maybe"] = True
    with pytest.raises(StateError):
        decode(Outer, data)
    data = encode(sample())
    data["colour"] = 9
    with pytest.raises(StateError, match="not a Colour"):
        decode(Outer, data)


def test_a_newer_version_is_refused_with_the_parts_name():
    check_version(sample(), "widget")
    newer = Outer(items=(), pair=(0, ""), colour=Colour.RED, maybe=1, version=4)
    with pytest.raises(StateError, match="saved widget is version 4; this Hospes reads version 3"):
        check_version(newer, "widget")


def test_live_objects_cannot_be_encoded():
    with pytest.raises(StateError, match="dict"):
        encode({"a": 1})
