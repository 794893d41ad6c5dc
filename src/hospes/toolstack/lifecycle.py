"""Domain lifecycle facts shared by the daemon, the domain process, ``hospes run`` and the CLI.

* what to do when a guest stops (xl's ``on_poweroff`` / ``on_reboot`` / ``on_crash``),
* the state a domain is reported in, and xl's six state letters for it.

The reported states (the API's ``state`` field) and xl's letters::

    building   --p---   the domain process is building the domain (Xen: created paused)
    incoming   --p---   waiting for or receiving a migration stream (xl's receiving side
                        is a paused domain too)
    running    r----- / -b----   r when some vCPU is runnable, b when all are blocked
    paused     --p---
    shutdown   ---s?-   preserved after the guest stopped; ? = xl's reason letter
    crashed    ---sc-   the guest crashed and on_crash=preserve, or its process died
    dying      -----d   being destroyed
"""

from __future__ import annotations

from enum import StrEnum

from hospes.domain import ShutdownReason
from hospes.toolstack.spec import Action, DomainSpec


class DomainState(StrEnum):
    """A domain's state: ``building`` .. ``shutdown`` are recorded, ``crashed``/``dying`` only reported."""

    BUILDING = "building"
    INCOMING = "incoming"       # waiting for or receiving a migration stream
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    DYING = "dying"


#: States a domain process is in while its domain exists.
LIVE_STATES = frozenset({DomainState.BUILDING, DomainState.INCOMING, DomainState.RUNNING, DomainState.PAUSED})


class Outcome(StrEnum):
    """What Hospes does with a guest that stopped (xl's actions, as far as Hospes implements them)."""

    DESTROY = "destroy"
    RESTART = "restart"
    PRESERVE = "preserve"


class ShutdownRequest(StrEnum):
    """What a toolstack may ask a guest to do through xenstore's ``control/shutdown``."""

    POWEROFF = "poweroff"
    REBOOT = "reboot"


class WaitOutcome(StrEnum):
    """How a shutdown or reboot request ended (the API's ``outcome``)."""

    REQUESTED = "requested"     # not waited for
    DESTROYED = "destroyed"
    SHUTDOWN = "shutdown"       # preserved
    RESTARTED = "restarted"
    CRASHED = "crashed"


# xl's shutdown reason letters, indexed by Xen's SHUTDOWN_* code ("-rscwS").
REASON_CODES = {ShutdownReason.POWEROFF: 0, ShutdownReason.REBOOT: 1, ShutdownReason.SUSPEND: 2,
                ShutdownReason.CRASH: 3, ShutdownReason.WATCHDOG: 4, ShutdownReason.SOFT_RESET: 5}
REASON_LETTERS = "-rscwS"

# xl's action names -> what Hospes does. No core dumps yet; rename-restart and
# soft-reset restart the domain in place (same domid, see docs/toolstack.md).
ACTIONS = {
    Action.DESTROY: Outcome.DESTROY,
    Action.RESTART: Outcome.RESTART,
    Action.PRESERVE: Outcome.PRESERVE,
    Action.RENAME_RESTART: Outcome.RESTART,
    Action.COREDUMP_DESTROY: Outcome.DESTROY,
    Action.COREDUMP_RESTART: Outcome.RESTART,
    Action.SOFT_RESET: Outcome.RESTART,
}

# A guest that restarts more often than this is stopped (preserved, with a message) instead
# of looping.
RESTART_LIMIT = 10
RESTART_WINDOW_S = 60.0
# And no restart comes sooner than this after the previous boot began: xl sleeps 2 s before
# every restart (tools/xl/xl_vmcontrol.c, "Done. Rebooting now"); Hospes waits only what is
# left of 2 s, so a guest that ran longer restarts at once.
RESTART_MIN_INTERVAL_S = 2.0


def action_for(reason: ShutdownReason, spec: DomainSpec) -> Outcome:
    """What to do with a guest that stopped with ``reason``, by the spec's ``on_*`` keys.

    A suspend without a save is preserved (xl leaves it to the caller too); a
    domain the toolstack destroyed stays destroyed.
    """
    if reason is ShutdownReason.SUSPEND:
        return Outcome.PRESERVE
    configured = {
        ShutdownReason.POWEROFF: spec.on_poweroff,
        ShutdownReason.REBOOT: spec.on_reboot,
        ShutdownReason.CRASH: spec.on_crash,
        ShutdownReason.WATCHDOG: spec.on_watchdog,
        ShutdownReason.SOFT_RESET: spec.on_soft_reset,
    }.get(reason)
    return Outcome.DESTROY if configured is None else ACTIONS[configured]


def _reason(reason: str | None) -> ShutdownReason | None:
    try:
        return ShutdownReason(reason) if reason else None
    except ValueError:
        return None


def reason_code(reason: str | None) -> int:
    """Xen's SHUTDOWN_* code for a reason (as the API spells it); 0 for none or an unknown one."""
    known = _reason(reason)
    return REASON_CODES.get(known, 0) if known is not None else 0


def reason_letter(reason: str | None) -> str:
    """xl's letter for a shutdown reason; ``?`` for none or one xl has no letter for."""
    known = _reason(reason)
    code = REASON_CODES.get(known) if known is not None else None
    return REASON_LETTERS[code] if code is not None else "?"


def xl_flags(state: DomainState, reason: ShutdownReason | None = None, blocked: bool = False) -> str:
    """xl's six state letters ``r b p s <reason> d`` for a reported state."""
    if state == DomainState.RUNNING:
        return "-b----" if blocked else "r-----"
    if state in (DomainState.PAUSED, DomainState.BUILDING, DomainState.INCOMING):
        return "--p---"
    if state == DomainState.SHUTDOWN:
        return f"---s{reason_letter(reason)}-"
    if state == DomainState.CRASHED:
        return "---sc-"
    if state == DomainState.DYING:
        return "-----d"
    return "------"
