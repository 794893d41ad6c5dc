"""`hospes exec` on a distribution's console: logging in at a getty before the marker protocol.

A scripted console stands in for the guest: these check what MarkerRun types, and
when, for a getty, a shell that is already there, and a password prompt.
"""

from __future__ import annotations

import pytest

from hospes.toolstack.console_run import LOGIN_USER, PROBE_INTERVAL, WAKE_WAIT, MarkerRun


def drive(m: MarkerRun, answer, until: float = 30.0) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Step a fake clock by 0.25 s; ``answer(typed)`` is the console's output for what was typed."""
    typed: list[bytes] = []
    now = 100.0
    while not m.done and now < 100.0 + until:
        out = m.to_type(now)
        if out:
            typed.append(out)
            m.feed(answer(out))
        now += 0.25
    return typed


def test_getty_login_then_command() -> None:
    m = MarkerRun("uname", token="tok")
    state = {"logged_in": False}

    def console(typed: bytes) -> bytes:
        if not state["logged_in"]:
            if typed == b"\n":
                return b"\r\nDebian GNU/Linux 12 debian hvc0\r\n\r\ndebian login: "
            if typed == f"{LOGIN_USER}\n".encode():
                state["logged_in"] = True
                return b"root\r\nLinux debian 6.1.0\r\nroot@debian:~# "
            return b"\r\nLogin incorrect\r\ndebian login: "
        if b"tok ready" in typed:
            return typed.replace(b"\n", b"\r\n") + b"tok-ready\r\nroot@debian:~# "
        if b"tok begin" in typed:
            return b"tok-begin\r\nLinux\r\ntok-end 0\r\nroot@debian:~# "
        return b""

    typed = drive(m, console)
    assert typed[0] == b"\n" and typed[1] == b"root\n"
    assert b"tok ready" in typed[2] and b"tok begin" in typed[3]
    assert m.done and m.exit_status == 0 and m.output == "Linux\n"


def test_shell_prompt_starts_probes_without_waiting() -> None:
    m = MarkerRun("true", token="t")
    assert m.to_type(0.0) == b"\n"
    m.feed(b"\r\nhospes:/# ")
    assert b"t ready" in m.to_type(0.1)     # a shell prompt: no login, no wait
    assert m.to_type(0.2) == b""            # the next probe only after PROBE_INTERVAL
    assert b"t ready" in m.to_type(0.1 + PROBE_INTERVAL)


def test_silence_probes_after_the_wake_wait() -> None:
    m = MarkerRun("true", token="t")
    assert m.to_type(0.0) == b"\n"
    assert m.to_type(WAKE_WAIT / 2) == b""
    assert b"t ready" in m.to_type(WAKE_WAIT)


def test_a_password_prompt_is_an_error() -> None:
    m = MarkerRun("true", token="t")
    m.to_type(0.0)
    m.feed(b"debian login: ")
    assert m.to_type(0.1) == b"root\n"
    m.feed(b"root\r\nPassword: ")
    with pytest.raises(ValueError, match="asks for root's password"):
        m.to_type(0.2)


def test_a_login_prompt_after_a_reboot_is_answered_again() -> None:
    m = MarkerRun("true", token="t")
    m.to_type(0.0)
    m.feed(b"~ # ")
    assert b"t ready" in m.to_type(0.1)
    m.feed(b"reboot: Restarting system\r\n...\r\ndebian login: ")
    assert m.to_type(0.2) == b"root\n"


def test_a_probe_taken_for_a_user_name_fails_that_login() -> None:
    m = MarkerRun("true", token="t")
    m.to_type(0.0)
    assert b"t ready" in m.to_type(WAKE_WAIT)     # silence: probing
    m.feed(b"\r\ndebian login: printf ... t ready\r\nPassword: ")
    assert m.to_type(WAKE_WAIT + 0.1) == b"\n"    # an empty password ends that login
    m.feed(b"\r\nLogin incorrect\r\ndebian login: ")
    assert m.to_type(WAKE_WAIT + 4) == b"root\n"
