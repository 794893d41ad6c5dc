"""xl.cfg fuzzer: mutated configs through the whole config path.

Seeds are the valid configs in ``examples/`` and ``tests/fuzz/xlcfg/``. Each
example takes one seed and applies 1-8 mutations drawn by hypothesis (byte
flips, truncation, deleted and duplicated spans, tokens of the grammar
inserted, two tokens swapped, a number made huge or negative, deeply nested
brackets, a splice of another seed). The result goes where a user's file goes:
``load_spec`` (read, UTF-8, ``xlcfg.parse``, ``DomainSpec.from_config``), then
the JSON round trip of the state files, then ``domain_config`` (the
``DomainConfig`` a domain is built from, without opening the images), and
``xl create``'s ``KEY=VALUE`` overrides go through ``parse_overrides``. Every
input must either be accepted or raise :class:`HospesError` (``ConfigError``,
``BlockError`` ...) with a message; any other exception is a finding.

FUZZ_EXAMPLES mutated configs per run (``HOSPES_FUZZ_SCALE`` multiplies them,
``HOSPES_FUZZ_SEED`` picks another sequence); a failure prints the seed, the
mutated text and hypothesis' reproduce blob.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import given, note
from hypothesis import strategies as st

from fuzz_helpers import fuzz_seed, fuzz_settings
from hospes.errors import HospesError
from hospes.toolstack.domain_config import domain_config
from hospes.toolstack.spec import DomainSpec, load_spec
from hospes.toolstack.xlcfg import parse, parse_overrides

REPO = Path(__file__).resolve().parents[1]
SEEDS: tuple[bytes, ...] = tuple(p.read_bytes() for p in sorted(
    [*REPO.glob("examples/*.cfg"), *(REPO / "tests" / "fuzz" / "xlcfg").glob("*.cfg")]))
FUZZ_SEED = fuzz_seed(6)
FUZZ_EXAMPLES = 1000

# Pieces of the grammar and values at the edges of what the readers accept.
TOKENS: tuple[bytes, ...] = (
    b"=", b"+=", b"[", b"]", b",", b";", b"'", b'"', b"\\", b"\\x", b"\\x4", b"\\777", b"\\0", b"\\n",
    b"#", b"\n", b"\r\n", b"\t", b" ", b"\0", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\xf0\x9f\x92\xa5",
    b"0", b"-1", b"0x", b"0xffffffffffffffff", b"18446744073709551616", b"9" * 400, b"08", b"1e9", b"-0",
    b"name", b"memory", b"maxmem", b"vcpus", b"maxvcpus", b"disk", b"vif", b"cpus", b"cap", b"cpu_weight",
    b"kernel", b"ramdisk", b"bootloader", b"bootloader_args", b"uuid", b"type", b"on_crash", b"cmdline",
    b"@default", b"pygrub", b"vdev=", b"target=", b"format=", b"access=", b"devtype=cdrom", b"mac=",
    b"bridge=", b"rate=", b"mtu=", b"vifname=", b"devid=", b"ip=", b"script=", b"backend=",
    b"nodes:", b"^", b"-", b"all", b"..", b"/", b"/dev/zero", b"/proc/self/mem", b"../../etc/passwd",
    b"[[[[[[[[", b"]]]]]]]]", b"a" * 5000,
)
NUMBER = re.compile(rb"\b(0x[0-9a-fA-F]+|\d+)\b")
WORD = re.compile(rb"[A-Za-z_@][A-Za-z0-9_.-]*|\d+|\S")
HUGE = (b"4294967296", b"2147483648", b"65536", b"0x7fffffffffffffff", b"99999999999999999999999",
        b"-2147483649", b"0", b"-1", b"1" + b"0" * 60)


@st.composite
def mutated_config(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(("flip", "truncate", "delete", "duplicate", "insert", "swap", "number",
                                     "nest", "splice")))
        size = len(data)
        at = draw(st.integers(0, size))
        if kind == "flip" and size:
            at = min(at, size - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            span = bytes(data[at:at + draw(st.integers(1, 200))])
            data[at:at] = span * draw(st.integers(1, 50))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS)) * draw(st.sampled_from((1, 1, 1, 2, 100)))
        elif kind == "swap":
            words = list(WORD.finditer(data))
            if len(words) >= 2:
                a, b = sorted(draw(st.lists(st.sampled_from(words), min_size=2, max_size=2)),
                              key=lambda m: m.start())
                if a.end() <= b.start():
                    data[:] = (data[:a.start()] + b.group() + data[a.end():b.start()] + a.group()
                               + data[b.end():])
        elif kind == "number":
            numbers = list(NUMBER.finditer(data))
            if numbers:
                m = draw(st.sampled_from(numbers))
                data[m.start():m.end()] = draw(st.sampled_from(HUGE))
        elif kind == "nest":
            depth = draw(st.sampled_from((2, 10, 64, 65, 1000, 100000)))
            closing = draw(st.sampled_from((depth, depth - 1, 0)))
            data[at:at] = b"x = " + b"[" * depth + b"1" + b"]" * closing + b"\n"
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            cut = draw(st.integers(0, len(other)))
            data[at:] = other[cut:]
    return bytes(data)


override_text = st.one_of(
    st.text(max_size=60),
    st.builds(lambda k, v: k + v, st.sampled_from(["memory=", "name=", "disk=", "vif+=", "cpus=", "=", "x",
                                                   "vcpus=", "memory+="]),
              st.sampled_from([t.decode("utf-8", "replace") for t in TOKENS])),
)


def _through_the_config_path(path: Path, overrides: list[str]) -> None:
    spec = load_spec(path, overrides)
    # The state files' JSON round trip gives the same spec back.
    again = DomainSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec, (spec, again)
    domain_config(spec, 1, lambda message: None, boot_from_images=False)


_workdir = tempfile.TemporaryDirectory(prefix="hospes-fuzz-xlcfg-")


@fuzz_settings(FUZZ_EXAMPLES, FUZZ_SEED)
@given(text=mutated_config(), overrides=st.lists(override_text, max_size=3))
def test_mutated_configs_parse_or_raise_a_clear_error(text: bytes, overrides: list[str]) -> None:
    note(f"HOSPES_FUZZ_SEED={FUZZ_SEED}; config {text!r}; overrides {overrides!r}")
    path = Path(_workdir.name) / "fuzz.cfg"
    path.write_bytes(text)
    try:
        _through_the_config_path(path, overrides)
    except HospesError as e:
        assert str(e).strip(), "an error without a message"


@fuzz_settings(FUZZ_EXAMPLES // 4, FUZZ_SEED)
@given(text=st.text(alphabet=st.sampled_from(list("[]=+,;'\"\\ \n\t#x0123456789abcdefg_")), max_size=300))
def test_random_grammar_soup_parses_or_raises_a_clear_error(text: str) -> None:
    note(f"HOSPES_FUZZ_SEED={FUZZ_SEED}; text {text!r}")
    try:
        values = parse(text, "soup.cfg")
        DomainSpec.from_config(values, source="soup.cfg")
    except HospesError as e:
        assert str(e).strip()


@fuzz_settings(FUZZ_EXAMPLES // 4, FUZZ_SEED)
@given(overrides=st.lists(override_text, max_size=4))
def test_overrides_parse_or_raise_a_clear_error(overrides: list[str]) -> None:
    note(f"HOSPES_FUZZ_SEED={FUZZ_SEED}; overrides {overrides!r}")
    base = parse(SEEDS[0].decode(), "seed.cfg")
    try:
        parse_overrides(overrides, base)
    except HospesError as e:
        assert str(e).strip()


def test_seeds_are_valid_configs() -> None:
    # The mutations start from configs that load: a broken seed would only test the error path.
    with tempfile.TemporaryDirectory() as d:
        for i, seed in enumerate(SEEDS):
            path = Path(d) / f"{i}.cfg"
            path.write_bytes(seed)
            _through_the_config_path(path, [])
    assert len(SEEDS) >= 6
