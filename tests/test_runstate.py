"""The vCPU run-state machine: transitions, and waits that end exactly when an event says so."""

from __future__ import annotations

import threading
import time

import pytest

from hospes.pv.runstate import TRANSITIONS, RunEvent, RunState, VcpuRun
from waiting import wait_for


def in_thread(fn) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def test_the_table_moves_a_vcpu_up_blocked_and_down():
    r = VcpuRun()
    assert r.state is RunState.DOWN and not r.online
    assert r.fire(RunEvent.UP) is RunState.RUNNING and r.online
    assert r.fire(RunEvent.BLOCK) is RunState.BLOCKED and r.online
    assert r.fire(RunEvent.WAKE) is RunState.RUNNING
    assert r.fire(RunEvent.DOWN) is RunState.DOWN
    assert r.fire(RunEvent.WAKE) is RunState.DOWN  # not in the table: no change
    assert (RunState.DOWN, RunEvent.UP) in TRANSITIONS


def test_pause_remembers_the_state_and_events_meanwhile_change_it():
    r = VcpuRun(online=True)
    r.fire(RunEvent.BLOCK)
    assert r.fire(RunEvent.PAUSE) is RunState.PAUSED and r.online
    assert r.fire(RunEvent.UNPAUSE) is RunState.RUNNING  # the pause woke it
    r.fire(RunEvent.PAUSE)
    r.fire(RunEvent.DOWN)
    assert not r.online
    assert r.fire(RunEvent.UNPAUSE) is RunState.DOWN


def test_stopping_is_final():
    r = VcpuRun(online=True)
    r.fire(RunEvent.STOP)
    for event in RunEvent:
        assert r.fire(event) is RunState.STOPPING


def test_wait_runnable_sleeps_while_paused_and_returns_on_unpause():
    r = VcpuRun(online=True)
    r.fire(RunEvent.PAUSE)
    t, out = in_thread(r.wait_runnable)
    assert wait_for(lambda: r.parked)
    assert out == []
    r.fire(RunEvent.UNPAUSE)
    t.join(5)
    assert out == [RunState.RUNNING] and not r.parked


def test_wait_runnable_returns_stopping_for_a_down_vcpu_that_is_stopped():
    r = VcpuRun()
    t, out = in_thread(r.wait_runnable)
    assert wait_for(lambda: r.parked)
    r.fire(RunEvent.STOP)
    t.join(5)
    assert out == [RunState.STOPPING]


def test_block_returns_when_a_kick_finds_the_vcpu_ready():
    r = VcpuRun(online=True)
    ready = threading.Event()
    t, out = in_thread(lambda: r.block(ready.is_set))
    assert wait_for(lambda: r.state is RunState.BLOCKED)
    r.kick()                           # a kick without a reason: still blocked
    time.sleep(0.01)
    assert t.is_alive() and r.state is RunState.BLOCKED
    ready.set()
    r.kick()
    t.join(5)
    assert not t.is_alive() and r.state is RunState.RUNNING


def test_block_does_not_sleep_when_already_ready():
    r = VcpuRun(online=True)
    r.block(lambda: True)
    assert r.state is RunState.RUNNING


def test_block_ends_at_its_deadline_on_the_given_clock():
    r = VcpuRun(online=True)
    now = [100]
    t, out = in_thread(lambda: r.block(lambda: False, deadline_ns=150, now_ns=lambda: now[0]))
    assert wait_for(lambda: r.state is RunState.BLOCKED)
    now[0] = 200
    r.kick()
    t.join(5)
    assert not t.is_alive() and r.state is RunState.RUNNING


def test_pausing_a_blocked_vcpu_ends_the_block_and_it_parks_until_unpause():
    r = VcpuRun(online=True)
    t, _ = in_thread(lambda: (r.block(lambda: False), r.wait_runnable())[1])
    assert wait_for(lambda: r.state is RunState.BLOCKED)
    r.fire(RunEvent.PAUSE)
    assert r.wait_parked(5)               # out of the hypercall, sleeping between exits
    assert t.is_alive() and r.state is RunState.PAUSED
    r.fire(RunEvent.UNPAUSE)
    t.join(5)
    assert not t.is_alive() and r.state is RunState.RUNNING


def test_wait_parked_times_out_for_a_running_vcpu():
    r = VcpuRun(online=True)
    assert not r.wait_parked(0.01)


@pytest.mark.parametrize("event, final", [(RunEvent.STOP, RunState.STOPPING), (RunEvent.DOWN, RunState.DOWN)])
def test_stop_or_down_ends_a_block(event: RunEvent, final: RunState):
    r = VcpuRun(online=True)
    t, _ = in_thread(lambda: r.block(lambda: False))
    assert wait_for(lambda: r.state is RunState.BLOCKED)
    r.fire(event)
    t.join(5)
    assert not t.is_alive() and r.state is final


def test_a_vcpu_that_is_not_running_does_not_block():
    r = VcpuRun()
    r.block(lambda: False)  # returns at once: a down vCPU has nothing to sleep in
    assert r.state is RunState.DOWN
