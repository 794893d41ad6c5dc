"""`hospes run` on the toolstack's one configuration path: flags -> DomainSpec (the xl.cfg
grammar) -> DomainConfig, and the restart loop and signal policy it shares with the
domain process. Unit tests need no KVM; the one boot is marked kvm."""

from __future__ import annotations

import signal
import threading
import time
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_hospes
from hospes.domain import ShutdownReason, ShutdownResult
from hospes.toolstack.lifecycle import Outcome, ShutdownRequest
from hospes.toolstack.run_spec import RunFlags, run_spec
from hospes.toolstack.runner import DomainRunner, RestartLimit, TerminationSignals
from hospes.toolstack.spec import DomainSpec, load_spec
from hospes.toolstack.xlcfg import ConfigError


def _cfg(tmp_path: Path, text: str) -> DomainSpec:
    path = tmp_path / "d.cfg"
    path.write_text(text)
    return load_spec(path)


# --- flags and xl.cfg give the same spec ----------------------------------------------------------


def test_flags_and_xl_cfg_give_equal_specs(tmp_path: Path) -> None:
    flags = RunFlags(kernel=Path("/boot/vmlinuz"), ramdisk=Path("/boot/initrd"), cmdline="console=hvc0 ro",
                     memory=128, vcpus=2, weight=512, cap=50, on_reboot="exit",
                     disks=("/srv/a.img,raw,xvda,rw", "/srv/b.img,ro"),
                     vifs=("tap=t0,mac=00:16:3e:00:00:05,bridge=br0,mtu=9000,rate=10Mb/s@20ms", ""))
    xl = _cfg(tmp_path, '''
        name = "guest"
        kernel = "/boot/vmlinuz"
        ramdisk = "/boot/initrd"
        cmdline = "console=hvc0 ro"
        memory = 128
        vcpus = 2
        cpu_weight = 512
        cap = 50
        on_reboot = "destroy"
        on_soft_reset = "destroy"
        disk = [ "/srv/a.img,raw,xvda,rw", "format=raw,vdev=xvdb,access=ro,target=/srv/b.img" ]
        vif = [ "vifname=t0,mac=00:16:3e:00:00:05,bridge=br0,mtu=9000,rate=10Mb/s@20ms", "" ]
    ''')
    assert run_spec(flags) == xl


def test_default_flags_are_the_default_image_with_its_console(tmp_path: Path) -> None:
    assert run_spec(RunFlags()) == _cfg(tmp_path, '''
        name = "guest"
        kernel = "@default"
        memory = 256
        cmdline = "console=hvc0 quiet noreplace-smp"
        on_soft_reset = "destroy"
    ''')


def test_a_command_goes_on_the_command_line() -> None:
    from hospes.images import encode_command

    spec = run_spec(RunFlags(command=("sh", "-c", "exit 3")))
    assert spec.cmdline == f"console=hvc0 quiet noreplace-smp {encode_command(['sh', '-c', 'exit 3'])}"
    assert run_spec(RunFlags(kernel=Path("/k"), command=("true",))).cmdline == encode_command(["true"])


def test_old_short_forms_are_aliases_of_xl_specs() -> None:
    short = run_spec(RunFlags(kernel=Path("/k"), disks=("a.img", "b.img,ro", "c.img,rw"),
                              vifs=("tap=t0,mtu=1400", "mac=00:16:3e:00:00:09")))
    full = run_spec(RunFlags(kernel=Path("/k"),
                             disks=("a.img,raw,xvda,rw", "b.img,raw,xvdb,ro", "c.img,raw,xvdc,rw"),
                             vifs=("vifname=t0,mtu=1400", "mac=00:16:3e:00:00:09")))
    assert short == full
    assert [(d.target, d.vdev, d.readwrite) for d in short.disks] == [
        ("a.img", "xvda", True), ("b.img", "xvdb", False), ("c.img", "xvdc", True)]


# --- bad flags get the errors of bad config lines -----------------------------------------------------


@pytest.mark.parametrize("key, flag, value", [
    ("disk", "disks", "a.img,qcow9,xvda"),
    ("disk", "disks", "a.img,raw"),
    ("disk", "disks", "a.img,raw,xvda,rw,extra"),
    ("disk", "disks", "vdev=xvda,devtype=floppy,target=a.img"),
    ("vif", "vifs", "speed=1"),
    ("vif", "vifs", "mac=00:16:3e"),
    ("vif", "vifs", "rate=1Mb/s@0ms"),
    ("vif", "vifs", "mtu=20"),
])
def test_bad_flags_fail_as_bad_config_entries(tmp_path: Path, key: str, flag: str, value: str) -> None:
    with pytest.raises(ConfigError) as from_file:
        _cfg(tmp_path, f'name = "guest"\nkernel = "/k"\n{key} = [ "{value}" ]\n')
    with pytest.raises(ConfigError) as from_flag:
        run_spec(RunFlags(kernel=Path("/k"), **{flag: (value,)}))
    assert from_flag.value.message == from_file.value.message
    assert str(from_flag.value) == f"--{key}: {from_file.value.message}"
    assert (from_file.value.location.line, from_file.value.location.column) == (3, len(key) + 6)


def test_the_flag_is_named_when_several_are_given() -> None:
    with pytest.raises(ConfigError, match=r"^--disk #2: Bad disk specification 'x.img,raw'"):
        run_spec(RunFlags(kernel=Path("/k"), disks=("a.img", "x.img,raw")))


def test_bad_numbers_are_located_at_their_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--vcpus: 'vcpus' is 0"):
        run_spec(RunFlags(kernel=Path("/k"), vcpus=0))


def test_bad_disk_flag_is_refused_by_the_cli_without_booting(tmp_path: Path) -> None:
    p = run_hospes("run", "--kernel", str(tmp_path / "k"), "--disk", "a.img,qcow9,xvda", "--", "true", timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2
    assert "Traceback" not in err
    assert err.startswith("hospes: --disk: Bad disk specification 'a.img,qcow9,xvda': unknown format 'qcow9'"), err


# --- the restart loop and the signal policy -----------------------------------------------------------


class FakeDomain:
    """Stops with the next scripted reason, or powers off when asked to; records what it was told."""

    def __init__(self, reasons: list[ShutdownReason]) -> None:
        self.reasons = reasons
        self.requests: list[str] = []
        self.destroyed = False
        self.closed = False
        self.input = b""

    def console_input(self, data: bytes) -> None:
        self.input += data

    def request_shutdown(self, reason: str) -> None:
        self.requests.append(reason)

    def destroy(self) -> None:
        self.destroyed = True

    def run(self) -> ShutdownResult:
        if self.destroyed:
            return ShutdownResult(ShutdownReason.DESTROYED)
        if self.requests:
            return ShutdownResult(ShutdownReason(self.requests[-1]))
        return ShutdownResult(self.reasons.pop(0))

    def close(self) -> None:
        self.closed = True


def _runner(reasons: list[ShutdownReason], spec: DomainSpec | None = None,
            **kw: object) -> tuple[DomainRunner, list[FakeDomain]]:
    spec = spec or DomainSpec(name="d", kernel="/k")
    built: list[FakeDomain] = []

    def build() -> FakeDomain:
        built.append(FakeDomain(reasons))
        return built[-1]

    return DomainRunner(lambda: spec, build, **kw), built  # type: ignore[arg-type]


def test_reboot_restarts_and_poweroff_ends() -> None:
    restarts: list[ShutdownReason] = []
    runner, built = _runner([ShutdownReason.REBOOT, ShutdownReason.REBOOT, ShutdownReason.POWEROFF],
                            on_restart=lambda r: restarts.append(r.reason))
    ending = runner.run()
    assert (ending.result.reason, ending.outcome) == (ShutdownReason.POWEROFF, Outcome.DESTROY)
    assert len(built) == runner.builds == 3 and all(d.closed for d in built)
    assert restarts == [ShutdownReason.REBOOT, ShutdownReason.REBOOT]


def test_on_actions_come_from_the_spec() -> None:
    spec = DomainSpec.from_config({"name": "d", "kernel": "/k", "on_reboot": "destroy", "on_crash": "preserve"})
    assert _runner([ShutdownReason.REBOOT], spec)[0].run().outcome is Outcome.DESTROY
    ending = _runner([ShutdownReason.CRASH], spec)[0].run()
    assert (ending.result.reason, ending.outcome) == (ShutdownReason.CRASH, Outcome.PRESERVE)


def test_a_restart_loop_is_preserved_past_the_limit() -> None:
    runner, built = _runner([ShutdownReason.CRASH] * 10, DomainSpec.from_config(
        {"name": "d", "kernel": "/k", "on_crash": "restart"}), restart_limit=RestartLimit(limit=2, min_interval_s=0))
    ending = runner.run()
    assert ending.outcome is Outcome.PRESERVE and len(built) == 3 and ending.too_fast
    assert ending.result.message.startswith("Rebooted too fast: restarted 2 times within 60 s; stopped")


def test_restarts_are_spaced_by_the_minimum_interval_as_xl_sleeps_before_a_restart() -> None:
    # A guest that reboots at once was restarted ~40 times a second; now each boot starts at
    # least min_interval_s after the previous one began (xl waits 2 s), and the limit stops it.
    import time

    starts: list[float] = []
    runner, built = _runner([ShutdownReason.REBOOT] * 10, restart_limit=RestartLimit(limit=3, min_interval_s=0.2),
                            on_built=lambda dom: starts.append(time.monotonic()))
    ending = runner.run()
    assert ending.too_fast and ending.outcome is Outcome.PRESERVE and len(built) == 4
    assert all(b - a >= 0.19 for a, b in zip(starts, starts[1:], strict=False)), starts
    assert ending.result.reason is ShutdownReason.REBOOT


def test_a_guest_that_ran_longer_than_the_interval_restarts_without_waiting() -> None:
    limit = RestartLimit(min_interval_s=30.0)
    import time

    assert limit.delay(time.monotonic() - 31.0) == 0.0
    assert 29.0 < limit.delay(time.monotonic()) <= 30.0


def test_destroy_during_the_restart_wait_ends_the_run() -> None:
    import threading

    runner, built = _runner([ShutdownReason.REBOOT] * 3, restart_limit=RestartLimit(min_interval_s=600.0))
    threading.Timer(0.3, runner.destroy).start()
    ending = runner.run()
    assert ending.outcome is Outcome.DESTROY and len(built) == 1


def test_destroy_ends_the_run_without_a_restart() -> None:
    runner, built = _runner([ShutdownReason.REBOOT], on_built=lambda dom: runner.destroy())
    ending = runner.run()
    assert (ending.result.reason, ending.outcome) == (ShutdownReason.DESTROYED, Outcome.DESTROY)
    assert len(built) == 1 and built[0].destroyed


def test_a_shutdown_asked_between_boots_reaches_the_next_domain() -> None:
    runner, built = _runner([ShutdownReason.REBOOT])
    runner.request_shutdown(ShutdownRequest.POWEROFF)
    assert runner.run().result.reason is ShutdownReason.POWEROFF
    assert built[0].requests == ["poweroff"]


def test_console_input_between_boots_reaches_the_next_domain_in_order() -> None:
    runner, built = _runner([ShutdownReason.REBOOT, ShutdownReason.POWEROFF],
                            on_built=lambda dom: runner.console_input(b"-live"))
    runner.console_input(b"typed early")
    runner.run()
    assert built[0].input == b"typed early-live"
    assert built[1].input == b"-live"


def test_first_sigterm_asks_for_poweroff_and_the_second_destroys() -> None:
    runner, built = _runner([ShutdownReason.REBOOT] * 3)
    with TerminationSignals(runner) as signals:
        signal.raise_signal(signal.SIGTERM)
        assert signals.last is not None
        signals.last.join(10)
        ending = runner.run()
        assert ending.result.reason is ShutdownReason.POWEROFF and built[0].requests == ["poweroff"]
        signal.raise_signal(signal.SIGHUP)
        signals.last.join(10)
        assert runner.destroying and signals.received == 2
        assert runner.run().result.reason is ShutdownReason.DESTROYED
    assert signal.getsignal(signal.SIGTERM) is not signals.handle


def test_a_signal_is_acted_on_off_the_thread_it_interrupted() -> None:
    """The handler interrupts the main thread wherever it is -- in the vCPU loop, inside
    the store's or a run state's re-entrant lock. Acting there re-entered them (a kick
    lost between a wake-up check and its wait: the guest slept through SIGTERM)."""
    acted_on: list[threading.Thread] = []

    class Recorder:
        def request_shutdown(self, reason: object) -> None:
            acted_on.append(threading.current_thread())

        def destroy(self) -> None:
            acted_on.append(threading.current_thread())

    with TerminationSignals(Recorder()) as signals:  # type: ignore[arg-type]
        for sig in (signal.SIGTERM, signal.SIGTERM):
            signal.raise_signal(sig)
            assert signals.last is not None
            signals.last.join(10)
    assert len(acted_on) == 2 and threading.main_thread() not in acted_on


def test_build_failures_end_the_run_and_count_builds() -> None:
    def build() -> FakeDomain:
        raise OSError("no kernel")

    runner = DomainRunner(lambda: DomainSpec(name="d", kernel="/k"), build)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        runner.run()
    assert runner.builds == 0


# --- a real boot -------------------------------------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.debian
def test_run_with_an_xl_disk_spec_boots_and_exits_zero(default_images, tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(1024 * 1024))
    p = subprocess.run([sys.executable, "-m", "hospes", "run", "--disk", "disk.img,raw,xvda,rw", "--", "true"],
                       cwd=tmp_path, input=b"", capture_output=True, timeout=240)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]


def test_the_main_thread_sees_a_signal_another_thread_received() -> None:
    """`kill` gives SIGTERM to any thread; Python runs the handler on the main thread
    only when it wakes. Domain.run's sleep must wake for it (it once slept on until
    the guest's next event, up to minutes: the guest was not asked to power off)."""
    from hospes.domain import sleep_until

    done = threading.Event()
    handled: list[int] = []

    def handler(signum: int, frame: object) -> None:
        handled.append(threading.get_ident())
        done.set()

    timed_out: list[bool] = []

    def give_up() -> None:
        timed_out.append(True)
        done.set()

    old = signal.signal(signal.SIGUSR2, handler)
    watchdog = threading.Timer(10, give_up)
    try:
        # Delivered to this other thread: its C-level handler only flags it for the main thread.
        def kill_self_later() -> None:
            time.sleep(0.5)      # the main thread is asleep by then
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)

        threading.Thread(target=kill_self_later).start()
        watchdog.start()
        sleep_until(done)
    finally:
        watchdog.cancel()
        signal.signal(signal.SIGUSR2, old)
    assert not timed_out, "the main thread slept through the signal; the watchdog ended the wait"
    assert handled == [threading.main_thread().ident]
