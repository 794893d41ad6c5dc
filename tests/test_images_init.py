"""/init's command-line handling, run with the host's /bin/sh against a fake cmdline.

init.sh only defines its functions when HOSPES_INIT_LIB=1, so these tests source it
and call the pieces; nothing here mounts, loads modules or powers anything off.
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from hospes.images import encode_command

INIT = resources.files("hospes.images").joinpath("init.sh")


def run_init_functions(script: str, tmp_path: Path, cmdline: str | None = None,
                       extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Source init.sh in /bin/sh and run ``script`` with the functions defined."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSPES_INIT_LIB": "1"}
    if cmdline is not None:
        (tmp_path / "cmdline").write_text(cmdline + "\n")
        env["HOSPES_CMDLINE"] = str(tmp_path / "cmdline")
    env.update(extra_env or {})
    with resources.as_file(INIT) as init:
        return subprocess.run(["/bin/sh", "-c", f". {shlex.quote(str(init))}\n{script}"],
                              env=env, capture_output=True, text=True, timeout=30, check=False)


def test_encode_command_is_one_base64_token_of_the_quoted_argv() -> None:
    token = encode_command(["echo", "a b", "it's"])
    key, _, value = token.partition("=")
    assert key == "hospes.cmd" and " " not in token
    assert base64.b64decode(value).decode() == "echo 'a b' 'it'\"'\"'s'"
    with pytest.raises(ValueError):
        encode_command([])


def test_sourcing_with_lib_flag_only_defines_functions(tmp_path: Path) -> None:
    result = run_init_functions("echo sourced", tmp_path)
    assert result.returncode == 0 and result.stdout == "sourced\n"


@pytest.mark.parametrize("argv", [
    ["echo", "hello world"],
    ["printf", "%s|", "a'b", 'c"d', "$HOME", "`x`", "*", "tab\there", "new\nline"],
    ["echo", "ünïcödé €"],
    ["sh", "-c", "echo out; echo err >&2; exit 3"],
])
def test_round_trip_through_the_cmdline(tmp_path: Path, argv: list[str]) -> None:
    expected = subprocess.run(argv, capture_output=True, text=True, check=False)
    cmdline = f"root=/dev/xvda console=hvc0 {encode_command(argv)} quiet"
    result = run_init_functions(
        'b64=$(hospes_cmdline_arg hospes.cmd) || exit 90\n'
        'cmd=$(hospes_decode_cmd "$b64") || exit 91\n'
        'hospes_run_cmd "$cmd"', tmp_path, cmdline)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.stdout + f"hospes-exit-status={expected.returncode}\n"
    assert result.stderr == expected.stderr


def test_exit_status_line_reports_failures_and_signals(tmp_path: Path) -> None:
    result = run_init_functions("hospes_run_cmd 'exit 42'; hospes_run_cmd 'kill -TERM $$'",
                                tmp_path)
    assert result.stdout.splitlines() == ["hospes-exit-status=42", "hospes-exit-status=143"]


@pytest.mark.parametrize("cmdline, expected", [
    ("console=hvc0 hospes.cmd=YQ== quiet", "YQ=="),
    ("hospes.cmd=Zm9v", "Zm9v"),
    ("hospes.cmd=first hospes.cmd=last", "last"),  # the last one wins, as in the kernel
    ("hospes.cmd=", ""),
    ("hospes.cmd=a+b/c== *", "a+b/c=="),
])
def test_cmdline_arg_finds_the_value(tmp_path: Path, cmdline: str, expected: str) -> None:
    result = run_init_functions("hospes_cmdline_arg hospes.cmd", tmp_path, cmdline)
    assert result.returncode == 0 and result.stdout == expected + "\n"


@pytest.mark.parametrize("cmdline", ["console=hvc0 quiet", "xhospes.cmd=YQ==",
                                     "hospes.cmdx=YQ==", "hospes.cmd", ""])
def test_cmdline_arg_fails_when_absent(tmp_path: Path, cmdline: str) -> None:
    result = run_init_functions("hospes_cmdline_arg hospes.cmd", tmp_path, cmdline)
    assert result.returncode == 1 and result.stdout == ""


def test_cmdline_arg_with_missing_file_fails(tmp_path: Path) -> None:
    result = run_init_functions(f"hospes_cmdline_arg hospes.cmd {tmp_path}/nothing", tmp_path)
    assert result.returncode == 1


def test_reboot_flag(tmp_path: Path) -> None:
    result = run_init_functions("hospes_cmdline_arg hospes.reboot", tmp_path,
                                "hospes.cmd=YQ== hospes.reboot=1")
    assert result.stdout == "1\n"


def test_modules_load_in_list_order_silently_and_failures_warn(tmp_path: Path) -> None:
    (tmp_path / "modules").write_text("/lib/a.ko\n\n# comment\n/lib/b.ko\n/lib/c.ko\n")
    script = (f'insmod() {{ echo "$1" >>{tmp_path}/log; echo chatter; '
              '[ "$1" != /lib/b.ko ] || { echo "no b" >&2; return 1; }; }\n'
              "hospes_load_modules")
    result = run_init_functions(script, tmp_path,
                                extra_env={"HOSPES_MODULE_LIST": str(tmp_path / "modules")})
    assert result.returncode == 0
    assert (tmp_path / "log").read_text() == "/lib/a.ko\n/lib/b.ko\n/lib/c.ko\n"
    assert result.stdout == ""
    assert result.stderr == "hospes: warning: insmod /lib/b.ko failed: chatter\nno b\n"
