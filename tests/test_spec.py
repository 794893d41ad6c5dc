"""DomainSpec, DiskSpec, VifSpec: xl's defaults, rules and test vectors (hospes.toolstack.spec)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hospes.toolstack.spec import (
    DEFAULT_IMAGE, Action, DiskSpec, DomainSpec, VifRate, VifSpec, load_spec,
)
from hospes.toolstack.xlcfg import ConfigError, Location, parse

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def spec_of(text: str, *overrides: str, base_dir: Path | None = None) -> DomainSpec:
    return DomainSpec.from_config(parse(text, "t.cfg"), overrides, base_dir=base_dir,
                                  source="t.cfg")


def spec_error(text: str, *overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        spec_of(text, *overrides)
    return info.value


MINIMAL = "name = 'vm'\nkernel = '/boot/vmlinuz'\n"


# =========================================================================== domain keys

def test_defaults_are_xls() -> None:
    s = spec_of(MINIMAL)
    assert (s.name, s.kernel, s.type, s.uuid) == ("vm", "/boot/vmlinuz", "pv", None)
    assert (s.memory, s.maxmem) == (32, 32)           # libxl: 32 MiB when nothing is given
    assert (s.vcpus, s.maxvcpus, s.cpus) == (1, 1, None)
    assert (s.cpu_weight, s.cap) == (256, 0)
    assert (s.ramdisk, s.cmdline, s.disks, s.vifs) == (None, None, (), ())
    assert (s.on_poweroff, s.on_reboot, s.on_crash) == ("destroy", "restart", "destroy")
    assert (s.on_watchdog, s.on_soft_reset) == (Action.DESTROY, Action.SOFT_RESET)
    assert s.extra_keys == () and s.warnings == ()


def test_plain_python_values_are_accepted() -> None:
    s = DomainSpec.from_config({"name": "vm", "kernel": "/k", "memory": 64,
                                "vif": ["", "mtu=9000"]})
    assert (s.memory, len(s.vifs), s.vifs[1].mtu) == (64, 2, 9000)


@pytest.mark.parametrize("text, memory, maxmem", [
    ("memory = 512", 512, 512), ("maxmem = 512", 512, 512),
    ("memory = 256\nmaxmem = 1024", 256, 1024), ("memory = '0x100'", 256, 256),
])
def test_memory_and_maxmem(text: str, memory: int, maxmem: int) -> None:
    s = spec_of(MINIMAL + text)
    assert (s.memory, s.maxmem) == (memory, maxmem)


def test_maxmem_below_memory_is_refused_at_maxmem() -> None:
    e = spec_error(MINIMAL + "memory = 512\nmaxmem = 256\n")
    assert str(e) == ("t.cfg:4:10: maxmem (256 MiB) must be equal to or greater than memory "
                      "(512 MiB)")


def test_vcpus_and_maxvcpus() -> None:
    s = spec_of(MINIMAL + "vcpus = 2\n")
    assert (s.vcpus, s.maxvcpus) == (2, 2)
    s = spec_of(MINIMAL + "maxvcpus = 4\n")
    assert (s.vcpus, s.maxvcpus) == (1, 4)
    e = spec_error(MINIMAL + "vcpus = 4\nmaxvcpus = 2\n")
    assert str(e).startswith("t.cfg:4:12: maxvcpus (2) is less than vcpus (4)")


@pytest.mark.parametrize("setting, where, phrase", [
    ("cpu_weight = 0", "3:14", "'cpu_weight' is 0; it must be between 1 and 65535"),
    ("cpu_weight = 65536", "3:14", "between 1 and 65535"),
    ("cap = '-1'", "3:7", "'cap' is -1; it must be between 0 and 65535"),
    ("vcpus = 0", "3:9", "'vcpus' is 0; it must be at least 1"),
    ("memory = 0", "3:10", "'memory' is 0; it must be between 1 and"),
    ("memory = 'lots'", "3:10", "'memory' must be a number"),
    ("memory = 12ab", "3:10", "'memory' must be a number"),
    ("memory = [256]", "3:10", "'memory' must be a single value, not a list"),
    ("memory = 256\nmemory += 0", "4:11", "Cannot use += with numbers"),
    ("disk = '/x,raw,xvda'", "3:8", "'disk' must be a list"),
    ("vif = [['']]", "3:8", "Items of 'vif' must be strings"),
    ("on_crash = 'explode'", "3:12", "Unknown on_crash action 'explode': it is one of destroy, "
                                     "restart, rename-restart, preserve"),
    ("uuid = 'not-a-uuid'", "3:8", "Failed to parse UUID"),
    ("name = ''", "3:8", "non-empty"),
    ("cpus = '0-3,^x'", "3:8", "Invalid CPU list item '^x'"),
    ("cpus = '^all'", "3:8", "Invalid CPU list item '^all'"),
    ("cpus = ['1', '3-2']", "3:14", "Invalid CPU list item '3-2'"),
    ("kernel = '@defualt'", "3:10", "Unknown image marker '@defualt'"),
])
def test_bad_values_are_errors_with_locations(setting: str, where: str, phrase: str) -> None:
    e = spec_error(MINIMAL + setting + "\n")
    assert str(e).startswith(f"t.cfg:{where}: ")
    assert phrase in e.message


def test_strings_and_numbers_convert_both_ways() -> None:
    s = spec_of("name = 42\nkernel = '/k'\nmemory = '512'\ncpus = 3\n")
    assert (s.name, s.memory, s.cpus) == ("42", 512, "3")


def test_name_is_mandatory() -> None:
    e = spec_error("kernel = '/k'\n")
    assert str(e) == 't.cfg: Domain name must be specified: add name = "..."'


def test_pv_needs_a_kernel() -> None:
    e = spec_error("name = 'vm'\n")
    assert "No kernel given" in str(e) and 'bootloader = "pygrub"' in str(e)
    assert str(e).startswith("t.cfg: ")


def test_bootloader_takes_the_kernel_from_the_first_disk() -> None:
    s = spec_of("name = 'vm'\nbootloader = '/usr/lib/xen/bin/pygrub'\ndisk = ['d.img,raw,xvda,rw']\n"
                "bootloader_args = ['--entry=1>1']\nkernel = 'boot/vmlinuz'\nextra = 'quiet'\n")
    assert (s.bootloader, s.bootloader_args, s.kernel, s.cmdline) == ("pygrub", ("--entry=1>1",), "boot/vmlinuz", "quiet")
    assert DomainSpec.from_dict(s.to_dict()) == s
    assert spec_of("name = 'vm'\nbootloader = 'pygrub'\ndisk = ['d.img,,xvda']\n"
                   "bootloader_args = '--entry=2 -q'\n").bootloader_args == ("--entry=2", "-q")
    assert "there is none" in str(spec_error("name = 'vm'\nbootloader = 'pygrub'\n"))
    assert "Hospes has pygrub built in" in str(spec_error("name = 'vm'\nbootloader = 'grub'\ndisk = ['d.img,,xvda']\n"))
    e = spec_error("name = 'vm'\nbootloader = 'pygrub'\ndisk = ['d.img,,xvda']\nbootloader_args = ['--bogus']\n")
    assert str(e).startswith("t.cfg:4:") and "Unknown pygrub argument" in str(e)


@pytest.mark.parametrize("text, phrase", [
    ("type = 'hvm'", "Domain type 'hvm' is not supported yet: Hospes runs PV guests"),
    ("type = 'pvh'", "Domain type 'pvh' is not supported yet"),
    ("builder = 'hvm'", "Domain type 'hvm' is not supported yet"),
    ("type = 'xen'", "Invalid domain type 'xen'"),
    ("builder = 'generic'\ntype = 'hvm'", "Contradicting \"builder\" and \"type\""),
    ("builder = 'linux'", "Invalid builder 'linux'"),
])
def test_only_pv_is_accepted(text: str, phrase: str) -> None:
    assert phrase in str(spec_error(MINIMAL + text + "\n"))


def test_type_pv_and_builder_generic() -> None:
    assert spec_of(MINIMAL + "type = 'pv'\n").type == "pv"
    assert spec_of(MINIMAL + "builder = 'generic'\n").type == "pv"


def test_uuid_is_normalised() -> None:
    s = spec_of(MINIMAL + "uuid = '6B2C2E2A-0DA6-4C5E-9B1F-38C1F0D4A5E7'\n")
    assert s.uuid == "6b2c2e2a-0da6-4c5e-9b1f-38c1f0d4a5e7"


def test_cpus_string_or_list() -> None:
    assert spec_of(MINIMAL + "cpus = 'all,^node:1,0-3,^2'\n").cpus == "all,^node:1,0-3,^2"
    assert spec_of(MINIMAL + "cpus = ['2', 'nodes:0-1']\n").cpus == ("2", "nodes:0-1")


def test_actions() -> None:
    s = spec_of(MINIMAL + "on_poweroff = 'preserve'\non_reboot = 'rename-restart'\n"
                          "on_crash = 'coredump-restart'\n")
    assert (s.on_poweroff, s.on_reboot, s.on_crash) == (
        Action.PRESERVE, Action.RENAME_RESTART, Action.COREDUMP_RESTART)


# --------------------------------------------------------------------------- cmdline

@pytest.mark.parametrize("text, cmdline", [
    ("root = '/dev/xvda1 ro'\nextra = 'console=hvc0'", "root=/dev/xvda1 ro console=hvc0"),
    ("root = '/dev/xvda1'", "root=/dev/xvda1"),
    ("extra = 'quiet'", "quiet"),
    ("cmdline = 'console=hvc0'", "console=hvc0"),
    ("", None),
])
def test_cmdline_from_root_and_extra(text: str, cmdline: str | None) -> None:
    assert spec_of(MINIMAL + text + "\n").cmdline == cmdline


def test_cmdline_wins_over_root_and_extra_with_a_warning() -> None:
    s = spec_of(MINIMAL + "cmdline = 'a'\nroot = '/dev/xvda'\nextra = 'b'\n")
    assert s.cmdline == "a"
    assert s.warnings == ("t.cfg:3:11: root= and extra= are ignored in favour of cmdline=",)


# --------------------------------------------------------------------------- paths

def test_relative_paths_are_taken_from_the_config_directory(tmp_path: Path) -> None:
    s = spec_of("name='vm'\nkernel='boot/vmlinuz'\nramdisk='/abs/initrd'\n", base_dir=tmp_path)
    assert s.kernel == str(tmp_path / "boot/vmlinuz") and s.ramdisk == "/abs/initrd"
    assert spec_of("name='vm'\nkernel='vmlinuz'\n").kernel == "vmlinuz"   # no base: as written


def test_default_image_marker_is_kept(tmp_path: Path) -> None:
    s = spec_of(f"name='vm'\nkernel='{DEFAULT_IMAGE}'\nramdisk='{DEFAULT_IMAGE}'\n",
                base_dir=tmp_path)
    assert (s.kernel, s.ramdisk) == ("@default", "@default")
    assert s.uses_default_kernel and s.uses_default_ramdisk


def test_load_spec_resolves_against_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "vm.cfg"
    cfg.write_text("name = 'vm'\nkernel = 'vmlinuz'\nramdisk = '../initrd'\n")
    s = load_spec(cfg, ["memory=128"])
    assert s.kernel == str(tmp_path / "vmlinuz")
    assert s.ramdisk == str(tmp_path / "../initrd")
    assert s.memory == 128


def test_load_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "missing.cfg")
    bad = tmp_path / "bad.cfg"
    bad.write_text("name = 'vm'\nmemory = \n")
    with pytest.raises(ConfigError) as info:
        load_spec(bad)
    assert str(info.value).startswith(f"{bad}:2:10: Expected a value for 'memory'")


# --------------------------------------------------------------------------- other keys

def test_unknown_and_unsupported_keys_are_kept_with_warnings() -> None:
    s = spec_of(MINIMAL + "vnc = 1\nmemroy = 512\nfoo = ['a', [1]]\n")
    assert s.extra_keys == (("vnc", 1), ("memroy", 512), ("foo", ("a", (1,))))
    assert s.warnings == (
        "t.cfg:3:7: 'vnc' is not supported yet; it is ignored",
        "t.cfg:4:10: unknown key 'memroy' is ignored (did you mean 'memory'?)",
        "t.cfg:5:7: unknown key 'foo' is ignored",
    )
    assert s.memory == 32


def test_warnings_do_not_take_part_in_equality() -> None:
    s = spec_of(MINIMAL)
    assert dataclasses.replace(s, warnings=("x",)) == s
    assert hash(s) == hash(dataclasses.replace(s, warnings=("x",)))


# --------------------------------------------------------------------------- overrides

def test_overrides_apply_after_the_file() -> None:
    s = spec_of(MINIMAL + "memory = 256\ndisk = ['/a,,xvda']\n",
                'name="web1"', "memory=1024", "disk += ['/b,,xvdb']", "vcpus=2")
    assert (s.name, s.memory, s.vcpus) == ("web1", 1024, 2)
    assert [d.vdev for d in s.disks] == ["xvda", "xvdb"]


def test_override_errors_name_the_argument() -> None:
    e = spec_error(MINIMAL, "memory=1024", "cap=-1")
    assert str(e).startswith("<command line>:2:5: Unexpected character '-'")
    e = spec_error(MINIMAL, "vcpus=0")
    assert str(e) == "<command line>:1:7: 'vcpus' is 0; it must be at least 1"


# --------------------------------------------------------------------------- JSON

RICH = MINIMAL + """uuid = '6b2c2e2a-0da6-4c5e-9b1f-38c1f0d4a5e7'
memory = 256; maxmem = 512; vcpus = 2; maxvcpus = 4; cpus = ['0', '1-2']
cpu_weight = 512; cap = 50; ramdisk = '/boot/initrd'; root = '/dev/xvda1'
disk = ['/srv/a.img,qcow2,xvda,rw', ',,hdc:cdrom,r',
        'vdev=xvdb,discard,backendtype=phy,target=/dev/vg/b']
vif = ['', 'mac=00:16:3E:01:02:03,bridge=br0,rate=10MB/s@20ms,mtu=9000,devid=7']
on_crash = 'preserve'
vnc = 1; foo = ['x', [2]]
"""


def test_json_round_trip() -> None:
    s = spec_of(RICH)
    data = json.loads(json.dumps(s.to_dict()))
    assert data["format"] == 1 and data["on_crash"] == "preserve" and data["cpus"] == ["0", "1-2"]
    assert data["extra_keys"] == {"vnc": 1, "foo": ["x", [2]]}
    back = DomainSpec.from_dict(data)
    assert back == s and back.warnings == s.warnings
    assert back.vifs[1].rate == VifRate(10_000_000, 20_000)
    assert back.to_dict() == s.to_dict()


def test_from_dict_fills_in_like_a_config_file() -> None:
    s = DomainSpec.from_dict({"format": 1, "name": "vm", "kernel": "@default", "memory": 512,
                              "maxmem": None, "vcpus": 2})
    assert s == spec_of("name = 'vm'\nkernel = '@default'\nmemory = 512\nvcpus = 2\n")
    assert (s.maxmem, s.maxvcpus) == (512, 2)


@pytest.mark.parametrize("mutate, phrase", [
    (lambda d: d.update(format=99), "Unsupported domain spec format 99"),
    (lambda d: d.update(on_reboot="explode"), "Corrupt domain spec"),
    (lambda d: d.update(memory=1024, maxmem=512), "inconsistent"),
    (lambda d: d.pop("name"), "Corrupt domain spec"),
    (lambda d: d.update(memory="512"), "memory is '512', not an integer"),
    (lambda d: d.update(kernel=7), "kernel is 7, not text"),
    (lambda d: d.update(name=5), "name is 5, not text"),
    (lambda d: d.update(disks=[{"vdev": "xvda"}]), "Corrupt domain spec"),
])
def test_from_dict_refuses_bad_state(mutate, phrase: str) -> None:
    data = spec_of(RICH).to_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=phrase):
        DomainSpec.from_dict(data)


# =========================================================================== disks

def disk(target, vdev, *, format="raw", access="rw", devtype="disk", **extra) -> DiskSpec:
    return DiskSpec(target=target, vdev=vdev, format=format, access=access, devtype=devtype,
                    **extra)


VOLUME = disk("/dev/vg/guest-volume", "hda")
ISO = disk("/root/image.iso", "hdc", access="ro", devtype="cdrom")
EMPTY_CDROM = disk("", "hdc", format="empty", access="ro", devtype="cdrom")
ISCSI = disk("iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-examplehost", "xvda",
             script="block-iscsi")

# Xen's tools/xl/check-xl-disk-parse, as data: each entry is the arguments of one
# `xl block-attach` (several arguments are read in turn into one disk), then the disk.
XL_DISK_VECTORS = [
    (["/dev/vg/guest-volume,,hda"], VOLUME),
    (["/dev/vg/guest-volume,raw,hda,rw"], VOLUME),
    (["format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume"], VOLUME),
    (["format=raw", "vdev=hda", "access=rw", "target=/dev/vg/guest-volume"], VOLUME),
    (["raw:/dev/vg/guest-volume,hda,w"], VOLUME),
    (["/root/image.iso,,hdc,cdrom"], ISO),
    (["/root/image.iso,,hdc,,cdrom"], ISO),
    (["/root/image.iso,raw,hdc,devtype=cdrom"], ISO),
    (["format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso"], ISO),
    (["format=raw", "vdev=hdc", "access=ro", "devtype=cdrom", "target=/root/image.iso"], ISO),
    (["raw:/root/image.iso,hdc:cdrom,ro"], ISO),
    (["backendtype=phy,vdev=xvdb,access=w,target=/dev/vg/guest-volume"],
     disk("/dev/vg/guest-volume", "xvdb", backendtype="phy")),
    (["devtype=cdrom,,,hdc"], EMPTY_CDROM),
    ([",,hdc:cdrom,r"], EMPTY_CDROM),
    ([",hdc:cdrom,r"], EMPTY_CDROM),
    (["vdev=hdc,access=r,devtype=cdrom,target="], EMPTY_CDROM),
    ([",empty,hdc:cdrom,r"], EMPTY_CDROM),
    (["vdev=hdc,access=r,devtype=cdrom,format=empty"],
     disk(None, "hdc", format="empty", access="ro", devtype="cdrom")),
    (["vdev=hdc,access=r,devtype=cdrom"],
     disk(None, "hdc", format="empty", access="ro", devtype="cdrom")),
    (["iscsi:iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-examplehost,xvda,w"],
     ISCSI),
    (["vdev=xvda,access=w,script=block-iscsi,target="
      "iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-examplehost"], ISCSI),
    (["drbd:app01,hda,w"], disk("app01", "hda", script="block-drbd")),
    (["discard", "vdev=hda", "target=/some/disk/image.raw"],
     disk("/some/disk/image.raw", "hda", discard=True)),
    (["cdrom", "no-discard", "vdev=hda", "target=/some/disk/image.iso"],
     disk("/some/disk/image.iso", "hda", access="ro", devtype="cdrom", discard=False)),
    (["trusted", "vdev=hda", "target=/some/disk/image.raw"],
     disk("/some/disk/image.raw", "hda", trusted=True)),
    (["untrusted", "vdev=hda", "target=/some/disk/image.raw"],
     disk("/some/disk/image.raw", "hda", trusted=False)),
]


@pytest.mark.parametrize("specs, expected", XL_DISK_VECTORS)
def test_xl_disk_vectors(specs: list[str], expected: DiskSpec) -> None:
    assert DiskSpec.parse(specs) == expected
    # In a config file the same arguments are one comma-separated string.
    assert DiskSpec.parse(",".join(specs)) == expected


def test_xl_disk_vector_without_vdev_fails() -> None:
    with pytest.raises(ConfigError, match="no vdev given"):
        DiskSpec.parse("foo")


@pytest.mark.parametrize("spec, phrase", [
    ("/x,qcow3,xvda", "unknown format 'qcow3'"),
    ("/x,raw,xvda,rw,extra", "too many positional parameters"),
    ("/x,raw,xvda,rwx", "unknown access 'rwx'"),
    ("foo=bar,vdev=xvda,target=/x", "unknown parameter 'foo'"),
    ("bogus:/x,xvda", "unknown deprecated disk prefix"),
    ("devtype=floppy,vdev=xvda,target=/x", "unknown devtype 'floppy'"),
    ("/x,,xvda:floppy", "unknown deprecated type 'floppy'"),
    ("backendtype=nbd,vdev=xvda,target=/x", "unknown backendtype 'nbd'"),
    ("format=raw,format=qcow2,vdev=xvda,target=/x", "format given twice"),
    ("vdev=xvda,vdev=xvdb,target=/x", "vdev given twice"),
    ("vdev=xvda", "no target given"),
    ("/x,raw,=", "bad disk syntax"),
])
def test_bad_disks(spec: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        DiskSpec.parse(spec)


def test_disk_target_keeps_commas_and_colons_and_the_rest() -> None:
    d = DiskSpec.parse("vdev=xvda, target=nbd:host:1234,name=x  ")
    assert d.target == "nbd:host:1234,name=x  "


def test_disk_error_points_at_the_list_item() -> None:
    e = spec_error(MINIMAL + "disk = [ '/a,,xvda',\n  '/b,qcow9,xvdb' ]\n")
    assert str(e).startswith("t.cfg:4:3: Bad disk specification '/b,qcow9,xvdb': unknown format")


def test_disk_properties_and_dict_round_trip() -> None:
    d = DiskSpec.parse("/x,,xvda,ro")
    assert not d.readwrite and not d.removable
    assert DiskSpec.from_dict(d.to_dict()) == d


# =========================================================================== vifs

# Xen's tools/xl/check-xl-vif-parse, as data: rate -> (bytes per interval, interval in
# µs), or None where xl fails.
XL_VIF_RATE_VECTORS = [
    ("rate=foo", None), ("rate=10MB", None), ("rate=10MB/m", None), ("rate=10ZB", None),
    ("rate=10ZB/s", None), ("rate=10ZB/m", None),
    ("rate=16000000b/s", (100000, 50000)), ("rate=16000000b/s@50ms", (100000, 50000)),
    ("rate=2000000B/s", (100000, 50000)), ("rate=2000000B/s@50ms", (100000, 50000)),
    ("rate=16Kb/s", (100, 50000)), ("rate=16Kb/s@50ms", (100, 50000)),
    ("rate=2KB/s", (100, 50000)), ("rate=2KB/s@50ms", (100, 50000)),
    ("rate=16Mb/s", (100000, 50000)), ("rate=16Mb/s@50ms", (100000, 50000)),
    ("rate=2MB/s", (100000, 50000)), ("rate=2MB/s@50ms", (100000, 50000)),
    ("rate=8Gb/s", (50000000, 50000)), ("rate=8Gb/s@50ms", (50000000, 50000)),
    ("rate=1GB/s", (50000000, 50000)), ("rate=1GB/s@50ms", (50000000, 50000)),
    ("rate=4294967296b/s", None), ("rate=4294967296Kb/s", None),
    ("rate=4294967296Mb/s", None), ("rate=4294967296Gb/s", None),
    ("rate=0B/s", None),
    ("rate=10Mb/s@foo", None), ("rate=10Mb/s@10h", None),
    ("rate=10MB/s@foo", None), ("rate=10MB/s@10h", None),
    ("rate=80Mb/s@1s", (10000000, 1000000)), ("rate=10MB/s@1s", (10000000, 1000000)),
    ("rate=1B/s@4294967296us", None), ("rate=1B/s@4294968ms", None), ("rate=1B/s@4295s", None),
    ("rate=1B/s@0us", None),
    ("rate=4294967295GB/s@5us", None), ("rate=4296MB/s@4294s", None),
    ("rate=@", None),
]


@pytest.mark.parametrize("spec, expected", XL_VIF_RATE_VECTORS)
def test_xl_vif_rate_vectors(spec: str, expected: tuple[int, int] | None) -> None:
    if expected is None:
        with pytest.raises(ConfigError, match="Bad vif specification"):
            VifSpec.parse(spec)
    else:
        rate = VifSpec.parse(spec).rate
        assert rate is not None
        assert (rate.bytes_per_interval, rate.interval_usecs) == expected


@pytest.mark.parametrize("spec, trusted", [("trusted", True), ("untrusted", False)])
def test_xl_vif_trusted_vectors(spec: str, trusted: bool) -> None:
    assert VifSpec.parse(spec) == VifSpec(trusted=trusted)


def test_xl_vif_vector_unknown_word_fails() -> None:
    with pytest.raises(ConfigError, match="unknown parameter 'foo'"):
        VifSpec.parse("foo")


def test_vif_rate_units() -> None:
    assert VifRate.parse("10Mb/s") == VifRate(1_250_000, 50_000)
    assert VifRate.parse("1MB/s@10") == VifRate(1_000_000, 10_000_000)   # no unit: seconds
    assert VifRate.parse("1MB/s@10m") == VifRate(1_000_000, 10_000)
    assert VifRate.parse("1MB/s@7us") == VifRate(1_000_000, 7)
    assert VifRate.parse("010KB/s") == VifRate(8000, 50_000)            # strtoull: octal
    with pytest.raises(ValueError, match="octal"):
        VifRate.parse("018KB/s")


def test_vif_keys_and_defaults() -> None:
    assert VifSpec.parse("") == VifSpec()
    v = VifSpec.parse("mac=00:16:3E:74:3d:76, model=rtl8139,bridge=xenbr0,ip=10.0.0.2 10.0.0.3,"
                      "type=vif,vifname=web0,script=vif-route,backend=dom0,gatewaydev=eth0,"
                      "mtu=9000,devid=3", devid=1)
    assert v == VifSpec(devid=3, mac="00:16:3e:74:3d:76", model="rtl8139", bridge="xenbr0",
                        ip="10.0.0.2 10.0.0.3", type="vif", vifname="web0", script="vif-route",
                        backend="dom0", gatewaydev="eth0", mtu=9000)
    assert VifSpec.parse("mac=0-16-3e-1-2-3").mac == "00:16:3e:01:02:03"


@pytest.mark.parametrize("spec, phrase", [
    ("mac=00:16:3e:12:34", "invalid mac"), ("mac=00:16:3e:12:34:567", "invalid mac"),
    ("type=tap", "unknown type 'tap'"), ("mtu=12", "mtu 12 is out of range"),
    ("mtu=1500b", "mtu must be a decimal number"), ("colour=red", "unknown parameter 'colour'"),
])
def test_bad_vifs(spec: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        VifSpec.parse(spec)


def test_vifs_in_a_config_get_devids_and_warnings() -> None:
    s = spec_of(MINIMAL + "vif = [ '', 'bridge=br1', 'netdev=eth0,accel=x,colo_sock_mirror_id=1' ]")
    assert [v.devid for v in s.vifs] == [0, 1, 2]
    assert s.vifs[2].gatewaydev == "eth0"
    assert s.warnings == (
        "t.cfg:3:27: vif parameter 'netdev' is deprecated: use gatewaydev",
        "t.cfg:3:27: vif parameter 'accel' is not supported yet; it is ignored",
        "t.cfg:3:27: vif parameter 'colo_sock_mirror_id' is not supported yet; it is ignored",
    )


def test_duplicate_vif_devids_are_refused() -> None:
    e = spec_error(MINIMAL + "vif = [ '', 'devid=0' ]\n")
    assert str(e).startswith("t.cfg:3:13: vif devid 0 is used twice (also at t.cfg:3:9)")


def test_vif_error_points_at_the_list_item() -> None:
    e = spec_error(MINIMAL + "vif = [\n '',\n 'rate=10ZB/s' ]\n")
    assert str(e).startswith("t.cfg:5:2: Bad vif specification 'rate=10ZB/s': invalid rate")


# =========================================================================== examples

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.cfg"))


def test_the_examples_exist() -> None:
    assert {p.name for p in EXAMPLE_FILES} >= {
        "debian-pv.cfg", "minimal.cfg", "two-vcpus.cfg", "with-disk-and-vif.cfg"}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_parses_into_a_domain_spec(path: Path) -> None:
    s = load_spec(path)
    assert s.name == path.stem and s.type == "pv" and s.warnings == ()
    assert s.kernel == DEFAULT_IMAGE or (s.bootloader == "pygrub" and s.disks)
    assert DomainSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_example_contents() -> None:
    debian = load_spec(EXAMPLES / "debian-pv.cfg")
    assert (debian.ramdisk, debian.cmdline, debian.memory) == (
        DEFAULT_IMAGE, "console=hvc0 quiet noreplace-smp", 256)
    two = load_spec(EXAMPLES / "two-vcpus.cfg")
    assert (two.vcpus, two.maxvcpus, two.cpus, two.cpu_weight, two.cap) == (
        2, 4, ("0-1", "2-3"), 512, 150)
    devices = load_spec(EXAMPLES / "with-disk-and-vif.cfg")
    assert devices.cmdline == "root=/dev/xvda1 ro console=hvc0"
    assert [(d.vdev, d.access, d.devtype, d.format) for d in devices.disks] == [
        ("xvda", "rw", "disk", "raw"), ("xvdb", "ro", "disk", "raw")]
    assert devices.vifs[0] == VifSpec(devid=0)
    assert devices.vifs[1].rate == VifRate(1_250_000, 50_000)
    assert devices.vifs[1].mac == "00:16:3e:12:34:56" and devices.vifs[1].bridge == "xenbr0"
    disk = load_spec(EXAMPLES / "debian-disk.cfg")
    assert (disk.bootloader, disk.kernel, disk.memory, disk.vcpus) == ("pygrub", "", 1024, 2)
    assert [d.vdev for d in disk.disks] == ["xvda"] and disk.vifs[0].bridge == "xenbr0"


def test_location_of_plain_values_is_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        DomainSpec.from_config({"name": "vm", "kernel": "/k", "memory": 0}, source="api")
    e = info.value
    assert e.location == Location("api") and str(e).startswith("api: 'memory' is 0")
