"""grub.cfg run as GRUB 2.06 for Xen would run it: the conditions Debian's generated
configs test, and hand-written if/elif/else nesting.

The Debian configs are update-grub's own output (tests/data/grub/README.md says how
they were made); the file tests see a dict of paths, as pygrub's see the image.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hospes.bootloader.grubcfg import GrubConfigError, parse

DATA = Path(__file__).resolve().parent / "data" / "grub"
UUID = "5f3c1a2e-8d4b-4c6e-9a7f-0b1d2e3f4a5b"
FILE, DIRECTORY = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755
KERNELS = {"debian12": ("6.1.0-57-cloud-amd64", "6.1.0-28-cloud-amd64"),
           "debian13": ("6.12.118+deb13-cloud-amd64", "6.12.57+deb13-cloud-amd64")}


def files(present: dict[str, int]):  # type: ignore[no-untyped-def]
    """A file test's view of a filesystem holding ``present`` (path -> size; -1: a directory)."""
    def look(path: str) -> tuple[int, int, int] | None:
        size = present.get(path)
        if size is None:
            return None
        return (DIRECTORY, 4096, 0) if size < 0 else (FILE, size, size)   # mtime: the size
    return look


GRUBENV = {"/boot/grub/grubenv": 1024}


def debian(release: str) -> str:
    return (DATA / f"{release}-grub.cfg").read_text()


@pytest.mark.parametrize("release", ["debian12", "debian13"])
def test_update_grub_output_without_grubenv(release: str) -> None:
    """No grubenv (update-grub makes none; grub-install would): `load_env` never runs,
    next_entry is unset and the default is entry 0, the newest kernel."""
    new, old = KERNELS[release]
    menu = parse(debian(release), {"next_entry": "1>3"}, files({}))
    assert [e.index for e in menu.entries] == ["0", "1>0", "1>1", "1>2", "1>3"]
    assert menu.default == "0" and "have_grubenv" not in menu.variables
    first = menu.select()
    assert (first.title, first.entry_id) == ("Debian GNU/Linux", f"gnulinux-simple-{UUID}")
    assert (first.kernel, first.initrds) == (f"/boot/vmlinuz-{new}", (f"/boot/initrd.img-{new}",))
    assert first.args == "root=/dev/xvda ro quiet"
    recovery = menu.select("1>3")
    assert recovery.title == f"Debian GNU/Linux, with Linux {old} (recovery mode)"
    assert recovery.entry_id == f"gnulinux-{old}-recovery-{UUID}"
    assert recovery.kernel == f"/boot/vmlinuz-{old}" and " single" in recovery.args
    # the branches GRUB 2.06's features and the Xen platform take
    assert menu.variables["menuentry_id_option"] == "--id"
    assert menu.variables["timeout_style"] == "menu" and menu.variables["timeout"] == "5"
    assert menu.variables["font"] == "unicode"


@pytest.mark.parametrize("release", ["debian12", "debian13"])
def test_grub_reboot_next_entry_from_grubenv(release: str) -> None:
    """`grub-reboot '1>2'` writes next_entry to grubenv: the header makes it the default."""
    _, old = KERNELS[release]
    menu = parse(debian(release), {"next_entry": "1>2", "saved_entry": "0"}, files(GRUBENV))
    assert menu.variables["have_grubenv"] == "true" and menu.variables["boot_once"] == "true"
    assert menu.default == "1>2"
    assert menu.select().title == f"Debian GNU/Linux, with Linux {old}"


def test_an_empty_grubenv_is_not_loaded() -> None:
    menu = parse(debian("debian13"), {"next_entry": "1>2"}, files({"/boot/grub/grubenv": 0}))
    assert menu.default == "0" and "have_grubenv" not in menu.variables


@pytest.mark.parametrize("release", ["debian12", "debian13"])
def test_saved_default(release: str) -> None:
    """GRUB_DEFAULT=saved: the header's else branch sets default to saved_entry (the one
    line update-grub writes differently for it), which grub-set-default keeps in grubenv.
    prev_saved_entry replaces saved_entry only after default was set: from the next boot on."""
    _, old = KERNELS[release]
    text = debian(release)
    assert text.count('   set default="0"\n') == 1
    text = text.replace('   set default="0"\n', '   set default="${saved_entry}"\n')
    older = f"gnulinux-{old}-advanced-{UUID}"
    menu = parse(text, {"saved_entry": older}, files(GRUBENV))
    assert menu.select().kernel == f"/boot/vmlinuz-{old}" and " single" not in menu.select().args
    menu = parse(text, {"saved_entry": "0", "prev_saved_entry": older}, files(GRUBENV))
    assert menu.variables["saved_entry"] == older and menu.select().path == (0,)
    # next_entry wins over saved_entry: the if branch, not the else
    menu = parse(text, {"saved_entry": older, "next_entry": "0"}, files(GRUBENV))
    assert menu.select().path == (0,)
    # no grubenv: saved_entry is empty, which names no entry: the first, as GRUB
    assert parse(text, {"saved_entry": older}, files({})).select().path == (0,)


def test_efi_only_entries_are_not_defined_on_xen() -> None:
    """Debian 13's UEFI firmware entry is inside `if [ "$grub_platform" = "efi" ]`: never
    defined on Xen, so it takes no index; on EFI it would be entry 2."""
    text = debian("debian13") + "menuentry 'after' {\n linux /after\n}\n"
    assert parse(text).select("2").kernel == "/after"


# --- hand-written scripts -------------------------------------------------------------------------------


def kernel_of(text: str, present: dict[str, int] | None = None, grubenv: dict[str, str] | None = None) -> str:
    entry = parse(text, grubenv, files(present or {})).select()
    assert entry.kernel is not None
    return entry.kernel


def entry(name: str) -> str:
    return f"menuentry '{name}' {{\n linux /{name}\n}}\n"


def test_if_elif_else_nesting() -> None:
    script = """
if [ $grub_platform = efi ]; then
  set default=efi
elif [ "$grub_platform" = pc ]; then
  set default=pc
elif [ x$grub_platform = xxen ] ; then
  if [ -n "$unset" ]; then
    set default=never
  elif [ ! -z "$grub_cpu" ]
  then
    if [ -d /boot -a ! -e /boot/missing ]; then set default=xen64; else set default=wrong; fi
  else
    set default=no_cpu
  fi
else
  set default=other
fi
"""
    names = ["efi", "pc", "never", "xen64", "wrong", "no_cpu", "other"]
    body = "".join(entry(n) for n in names)
    assert kernel_of(script + body, {"/boot": -1}) == "/xen64"
    assert kernel_of(script + body, {"/boot": -1, "/boot/missing": 3}) == "/wrong"
    assert kernel_of(script.replace("$grub_cpu", "$nothing") + body) == "/no_cpu"


def test_entries_in_untaken_branches_do_not_exist() -> None:
    script = ("if [ $grub_platform = xen ]; then\n" + entry("xen") + "else\n" + entry("bios") + entry("bios2")
              + "fi\n" + entry("last") + "set default=1\n")
    menu = parse(script)
    assert [(e.index, e.title) for e in menu.entries] == [("0", "xen"), ("1", "last")]
    assert menu.select().title == "last"


def test_conditions() -> None:
    """GRUB's test: words left to right, never an error (tests/test_pygrub.py checks the same
    kinds of expression against GRUB 2.06 itself)."""
    cases = {
        '[ "" ]': False, "[ x ]": True, "[ ]": True, "[ $unset ]": True, '[ "$unset" ]': False,
        '[ -z "$unset" ]': True, "[ $unset = x ]": True, '[ "$unset" = x ]': False,
        "[ 10 -gt 9 ]": True, "[ 10 \\> 9 ]": False, "[ 0x10 -eq 16 ]": True, "[ 010 -eq 8 ]": True,
        "[ x -eq 0 ]": True, "[ -3 -lt -2 ]": True, "[ vmlinuz-2 -plt vmlinuz-11 ]": True,
        "[ 2 -le 2 -a 3 -ne 3 ]": False, "[ 2 -le 2 -o 3 -ne 3 ]": True, "[ a = b -o c = d -o e ]": True,
        "[ ! ( a = b -o c = c ) ]": False, "[ ! ! a ]": True, "[ a != b ]": True, "[ a = a": True,
        "test -f /boot/grub/grubenv": True, "test -s /boot/grub/grubenv": True, "[ -s /boot/empty ]": False,
        "[ -e /boot/empty ]": True, "[ -f /boot ]": False, "[ -s /boot ]": False, "[ -d (hd0,msdos1)/boot ]": True,
        "[ -f /boot/empty -a -d /boot ]": True, "[ /boot/grub/grubenv -nt /boot/empty ]": True,
        "[ /boot/grub/grubenv -ot /boot/empty ]": False, "[ /boot/grub/grubenv -ot-2000 /boot/empty ]": True,
        "[ /boot/missing -ot /boot/empty ]": True, "true": True, "false": False,
        "loadfont unicode": False, "keystatus --shift": False,
    }
    present = {"/boot": -1, "/boot/grub/grubenv": 1024, "/boot/empty": 0}
    for condition, expected in cases.items():
        text = f"if {condition}; then set default=1; fi\n" + entry("no") + entry("yes")
        assert kernel_of(text, present) == ("/yes" if expected else "/no"), condition


def test_exit_status_and_quoting() -> None:
    # $? is the last command's status; a command pygrub does not run has failed
    assert kernel_of('fwsetup --is-supported\nif [ "$?" = 0 ]; then set default=1; fi\n'
                     + entry("no") + entry("yes")) == "/no"
    assert kernel_of('[ a = a ]\nif [ "$?" = 0 ]; then set default=1; fi\n' + entry("no") + entry("yes")) == "/yes"
    assert kernel_of('load_env\nif [ "$?" = 0 ]; then set default=1; fi\n' + entry("no") + entry("yes")) == "/no"
    # single quotes keep '$'; a comment may hold quotes; '\' continues a line
    text = ("set k='/$x' # don't expand\nset x=ignored\n"
            "menuentry 'a' {\n  linux $k \\\n    arg=1\n}\n")
    entry_a = parse(text).select()
    assert (entry_a.kernel, entry_a.args) == ("/$x", "arg=1")


def test_entry_bodies_run_after_the_script_with_its_variables() -> None:
    """GRUB runs a menuentry's body when it is chosen, after the whole script; a body's
    `set` stays in that body; a submenu's `set default` is not the top menu's."""
    text = ("set k=/early\nmenuentry 'a' {\n  set opt=one\n  linux $k $opt\n}\n"
            "menuentry 'b' {\n  linux /b $opt\n}\n"
            "submenu 'more' {\n  set default=1\n" + entry("m0") + entry("m1") + "}\n"
            "set k=/late\n")
    menu = parse(text)
    assert menu.default == "0"
    a, b, m0, m1 = menu.entries
    assert (a.kernel, a.args, b.args) == ("/late", "one", "")
    assert (m0.index, m1.index) == ("2>0", "2>1")


def test_loops_and_functions_are_not_run() -> None:
    text = ("function pick {\n  set default=1\n}\npick\n"
            "for x in 1 2; do\n  set default=$x\ndone\n" + entry("a") + entry("b"))
    assert kernel_of(text) == "/a"


def test_broken_scripts_are_errors() -> None:
    for text, message in (("if [ a ]; then\n" + entry("a"), "a 'fi' is missing"),
                          ("fi\n", "'fi' without an 'if'"),
                          ("else\n", "'else' without an 'if'"),
                          ("}\n", "closes no block"),
                          ("for x in a; do\n", "a 'done' is missing"),
                          ("menuentry 'a\n", "quote is never closed"),
                          ("submenu 's' {\n" + entry("a"), "'}' is missing"),
                          ("menuentry 'a' { linux /a; }\n", "menuentry without '{' at the end of its line")):
        with pytest.raises(GrubConfigError, match=message):
            parse(text)
    deep = "submenu 's' {\n" * 40 + entry("a") + "}\n" * 40
    with pytest.raises(GrubConfigError, match="nests submenus deeper than"):
        parse(deep)
    with pytest.raises(GrubConfigError, match="nests parentheses deeper than"):
        parse("if [ " + "( " * 5000 + "a ]; then set x=1; fi\n")
