"""The xl.cfg grammar (hospes.toolstack.xlcfg): every value form, separators, +=, errors."""

from __future__ import annotations

import pytest

from hospes.errors import HospesError
from hospes.toolstack.xlcfg import (
    ConfigError, List, Location, Number, String, as_int, as_list, as_str, as_str_list, c_strtol,
    from_plain, parse, parse_overrides, to_plain,
)


def plain(text: str) -> dict:
    return {k: to_plain(v) for k, v in parse(text, "t.cfg").items()}


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, "t.cfg")
    return info.value


# --------------------------------------------------------------------------- values

def test_strings_in_single_and_double_quotes() -> None:
    assert plain("a = 'one'\nb = \"two\"\nc = ''\nd = \"it's\"\ne = 'say \"hi\"'\n") == {
        "a": "one", "b": "two", "c": "", "d": "it's", "e": 'say "hi"'}


def test_string_keeps_hash_and_semicolon_and_brackets() -> None:
    assert plain("a = '# not a comment; [x], y'\n") == {"a": "# not a comment; [x], y"}


def test_numbers_decimal_hex_octal_keep_their_text() -> None:
    values = parse("a = 512\nb = 0x1f\nc = 010\nd = 0\n", "t.cfg")
    assert [(v.text, v.value) for v in values.values()] == [
        ("512", 512), ("0x1f", 31), ("010", 8), ("0", 0)]
    assert all(isinstance(v, Number) for v in values.values())


def test_number_token_that_is_not_a_number_is_kept_as_text() -> None:
    # xl's lexer takes [0-9][0-9a-fx]* as a NUMBER; only a key wanting a number objects.
    values = parse("a = 12ab\nb = 08\n", "t.cfg")
    assert values["a"].text == "12ab" and values["a"].value is None
    assert values["b"].value is None
    assert to_plain(values["a"]) == "12ab"


def test_lists_empty_trailing_comma_newlines_comments_and_nesting() -> None:
    text = """disk = [ ]
vif = [ 'a', ]
x = [
    'one',   # first
    2,

    [ 'n', [ 3 ], ],
]
y = [ 'p'
    , 'q' ]
"""
    assert plain(text) == {"disk": [], "vif": ["a"], "x": ["one", 2, ["n", [3]]], "y": ["p", "q"]}


def test_list_items_remember_their_locations() -> None:
    values = parse("disk = [ 'a',\n   'b' ]\n", "t.cfg")
    lst = values["disk"]
    assert isinstance(lst, List)
    assert lst.location == Location("t.cfg", 1, 8)
    assert [i.location for i in lst.items] == [Location("t.cfg", 1, 10), Location("t.cfg", 2, 4)]


def test_identifiers_allow_digits_underscores_and_dots() -> None:
    assert plain("device_model_args_pv = []\na.b_c9 = 1\n") == {"device_model_args_pv": [],
                                                               "a.b_c9": 1}


# --------------------------------------------------------------------------- separators, comments

def test_newline_and_semicolon_separate_settings() -> None:
    assert plain('name="h0"; type="hvm"\nmemory = 5 ;; ;\n\n;vcpus=2') == {
        "name": "h0", "type": "hvm", "memory": 5, "vcpus": 2}


def test_last_setting_needs_no_newline() -> None:
    assert plain("a = 1") == {"a": 1}


def test_comments_whole_line_and_after_values() -> None:
    assert plain("# header\n\n  # indented\nmemory = 256 # MiB\n#trailing") == {"memory": 256}


def test_blank_file_and_only_comments() -> None:
    assert parse("", "t.cfg") == {}
    assert parse("# nothing\n\t \n", "t.cfg") == {}


def test_later_setting_replaces_earlier() -> None:
    values = parse("memory = 1\nmemory = 2\n", "t.cfg")
    assert to_plain(values["memory"]) == 2
    assert values["memory"].location.line == 2


# --------------------------------------------------------------------------- +=

def test_append_list_to_list() -> None:
    assert plain("disk = ['a']\ndisk += ['b', 'c']\n") == {"disk": ["a", "b", "c"]}


def test_append_string_concatenates_text() -> None:
    assert plain("name = 'vm'\nname += \"-1\"\n") == {"name": "vm-1"}


def test_append_to_absent_key_sets_it() -> None:
    assert plain("vif += ['']\nextra += 'quiet'\n") == {"vif": [""], "extra": "quiet"}


def test_append_after_replace_uses_latest_value() -> None:
    assert plain("disk = ['a']\ndisk = ['b']\ndisk += ['c']\n") == {"disk": ["b", "c"]}


def test_append_list_to_string_is_an_error() -> None:
    e = error("name = 'x'\nname += ['y']\n")
    assert e.location == Location("t.cfg", 2, 1)
    assert "Cannot add a list to a single value" in e.message and "t.cfg:1:8" in e.message


def test_numbers_built_with_append_are_not_numbers() -> None:
    values = parse("memory = 5\nmemory += 12\n", "t.cfg")
    assert values["memory"].text == "512"
    with pytest.raises(ConfigError, match=r"^t\.cfg:2:11: Cannot use \+= with numbers"):
        as_int(values["memory"], "memory")
    assert as_str(values["memory"], "memory") == "512"


# --------------------------------------------------------------------------- escapes

@pytest.mark.parametrize("source, value", [
    (r"'\''", "'"), (r'"\""', '"'), (r"'\\'", "\\"), (r"'\a\b\f\n\r\t\v'", "\a\b\f\n\r\t\v"),
    (r"'\x41\x7a'", "Az"), (r"'\101\7'", "A\x07"), (r"'\0101'", "\x081"), (r"'a\"b'", 'a"b'),
])
def test_escapes(source: str, value: str) -> None:
    assert plain(f"s = {source}\n") == {"s": value}


@pytest.mark.parametrize("source, column, phrase", [
    (r"'a\qb'", 7, r"Invalid escape \q"),
    (r"'\x4'", 6, r"Invalid \x escape"),
    (r"'\xzz'", 6, r"Invalid \x escape"),
    (r"'\400'", 6, r"Octal escape \400 is out of range"),
    (r"'\000'", 6, "NUL"),
])
def test_bad_escapes(source: str, column: int, phrase: str) -> None:
    e = error(f"s = {source}\n")
    assert e.location == Location("t.cfg", 1, column)
    assert phrase in e.message


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, line, column, phrase", [
    ("memory 256\n", 1, 8, "Expected '=' or '+=' after 'memory', found '256'"),
    ("name = \"a\"\nmemory = \n", 2, 10, "Expected a value for 'memory'"),
    ("name = web\n", 1, 8, "quote strings: name = \"web\""),
    ("a = 1 b = 2\n", 1, 7, "Expected a newline or ';' after the value of 'a', found 'b'"),
    ("disk = [ 'a' 'b' ]\n", 1, 14, "Expected ',' or ']' in the list of 'disk' opened at line 1"),
    ("disk = [ , ]\n", 1, 10, "Expected a value for 'disk'"),
    ("disk = [ 'a',\n", 2, 1, "found end of file"),
    ("= 5\n", 1, 1, "Expected a setting KEY = VALUE, found '='"),
    ("1a = 5\n", 1, 1, "Expected a setting KEY = VALUE, found '1a'"),
    ("x = 1\nname = 'web\n", 2, 8, "Unterminated string: close it with '"),
    ("name = \"a\\\nb\"\n", 1, 8, "Unterminated string"),
    ("Name = 'x'\n", 1, 1, "keys are lower case"),
    ("memory = 0x1F\n", 1, 13, "hex digits are lower case"),
    ("memory = -5\n", 1, 10, "not Python"),
    ("memory = 2 * 256\n", 1, 12, "Unexpected character '*'"),
    ("name = __import__('os')\n", 1, 8, "Unexpected character '_'"),
    ("vcpus = (1)\n", 1, 9, "not Python"),
    ("name = 'x'\r\n", 1, 11, "DOS (CRLF) line endings"),
    ("a = " + "[" * 80 + "\n", 1, 4 + 65, "nested more than 64 deep"),
])
def test_errors_say_what_is_expected_and_where(text: str, line: int, column: int,
                                               phrase: str) -> None:
    e = error(text)
    assert (e.location.line, e.location.column) == (line, column)
    assert phrase in e.message
    assert str(e) == f"t.cfg:{line}:{column}: {e.message}"
    assert e.message[0].isupper()


def test_config_error_is_a_hospes_error() -> None:
    assert issubclass(ConfigError, HospesError)
    assert str(ConfigError("Oops", Location("f"))) == "f: Oops"
    assert str(ConfigError("Oops")) == "Oops"


def test_nothing_is_evaluated(tmp_path) -> None:
    marker = tmp_path / "touched"
    text = f"name = 'x'\nkernel = \"open('{marker}', 'w')\"\n"
    assert plain(text)["kernel"] == f"open('{marker}', 'w')"
    assert not marker.exists()


# --------------------------------------------------------------------------- overrides

def test_overrides_replace_and_append() -> None:
    base = parse("name = 'a'\ndisk = ['x']\nmemory = 256\n", "t.cfg")
    out = parse_overrides(["name=\"b\"", "disk+=['y']", "vcpus = 2"], base)
    assert {k: to_plain(v) for k, v in out.items()} == {
        "name": "b", "disk": ["x", "y"], "memory": 256, "vcpus": 2}
    assert to_plain(base["name"]) == "a"                 # base untouched
    assert out["vcpus"].location == Location("<command line>", 3, 9)


def test_override_errors_point_at_the_argument() -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides(["memory=1", "name=web"])
    assert str(info.value).startswith("<command line>:2:6: Expected a value for 'name'")


@pytest.mark.parametrize("override, phrase", [
    ("a=1;b=2", "has 2 settings"), ("", "has no setting"), ("# x", "has no setting"),
    ("a=1\nb=2", "spans lines"),
])
def test_one_setting_per_override(override: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        parse_overrides([override])


# --------------------------------------------------------------------------- typed access

def test_as_int_reads_strings_and_numbers_like_strtol() -> None:
    loc = Location("t.cfg", 1, 1)
    assert as_int(String("512", loc), "memory") == 512
    assert as_int(String(" -0x10", loc), "x") == -16
    assert as_int(Number("0x10", loc), "x", 1, 16) == 16


@pytest.mark.parametrize("value, phrase", [
    (String("abc", Location("t.cfg", 3, 5)), "'memory' must be a number"),
    (Number("08", Location("t.cfg", 3, 5)), "'memory' must be a number"),
    (Number("99999999999999999999", Location("t.cfg", 3, 5)), "out of range"),
    (Number("0", Location("t.cfg", 3, 5)), "'memory' is 0; it must be between 1 and 100"),
    (List((), Location("t.cfg", 3, 5)), "'memory' must be a single value, not a list"),
])
def test_as_int_errors(value, phrase: str) -> None:
    with pytest.raises(ConfigError, match="^t.cfg:3:5: .*" + phrase):
        as_int(value, "memory", 1, 100)


def test_as_str_accepts_numbers_as_their_text() -> None:
    assert as_str(Number("0x10", Location("f")), "name") == "0x10"


def test_as_list_and_as_str_list() -> None:
    values = parse("disk = 'x'\nvif = ['a', ['b']]\n", "t.cfg")
    with pytest.raises(ConfigError, match=r"^t.cfg:1:8: 'disk' must be a list, e.g. disk = \["):
        as_list(values["disk"], "disk")
    with pytest.raises(ConfigError, match="^t.cfg:2:13: Items of 'vif' must be strings"):
        as_str_list(values["vif"], "vif")
    assert as_str_list(parse("d = ['a', 1]", "t.cfg")["d"], "d") == [
        ("a", Location("t.cfg", 1, 6)), ("1", Location("t.cfg", 1, 11))]


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("42", 42), ("0x2A", 42), ("052", 42), (" +42", 42), ("-42", -42),
    (str(2**63 - 1), 2**63 - 1),
])
def test_c_strtol(text: str, value: int) -> None:
    assert c_strtol(text) == value


@pytest.mark.parametrize("text", ["", "0x", "08", "1e3", "4 2", "42 ", str(2**63)])
def test_c_strtol_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        c_strtol(text)


def test_from_plain_and_to_plain_round_trip() -> None:
    loc = Location("<dict>")
    obj = {"name": "x", "memory": 256, "disk": ["a", ["b", 1]]}
    assert {k: to_plain(from_plain(v, loc)) for k, v in obj.items()} == obj
    with pytest.raises(ConfigError):
        from_plain(1.5, loc)
