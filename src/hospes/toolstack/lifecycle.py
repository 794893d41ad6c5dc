"""Domain lifecycle facts shared by the daemon, the domain process and the CLI.

* what to do when a guest stops (xl's ``on_poweroff`` / ``on_reboot`` / ``on_crash``),
* the state a domain is reported in, and xl's six state letters for it.

The reported states (the API's ``state`` field) and xl's letters::

    building   --p---   the domain process is building the domain (Xen: created paused)
    running    r----- / -b----   r when some vCPU is runnable, b when all are blocked
    paused     --p---
    shutdown   ---s?-   preserved after the guest stopped; ? = xl's reason letter
    crashed    ---sc-   the guest crashed and on_crash=preserve, or its process died
    dying      -----d   being destroyed
"""

from __future__ import annotations

from typing import Any, Mapping

# xl's shutdown reason letters, indexed by Xen's SHUTDOWN_* code ("-rscwS").
REASON_CODES = {"poweroff": 0, "reboot": 1, "suspend": 2, "crash": 3, "watchdog": 4, "soft_reset": 5}
REASON_LETTERS = "-rscwS"

# The on_* key that governs each shutdown reason, and xl's defaults.
REASON_KEY = {
    "poweroff": "on_poweroff",
    "reboot": "on_reboot",
    "crash": "on_crash",
    "watchdog": "on_watchdog",
    "soft_reset": "on_soft_reset",
}
DEFAULT_ACTIONS = {
    "on_poweroff": "destroy",
    "on_reboot": "restart",
    "on_crash": "destroy",
    "on_watchdog": "destroy",
    "on_soft_reset": "soft-reset",
}

# xl's action names -> what Hospes does. No core dumps yet; rename-restart and
# soft-reset restart the domain in place (same domid, see docs/toolstack.md).
ACTIONS = {
    "destroy": "destroy",
    "restart": "restart",
    "preserve": "preserve",
    "rename-restart": "restart",
    "coredump-destroy": "destroy",
    "coredump-restart": "restart",
    "soft-reset": "restart",
}

# A guest that restarts more often than this is preserved instead (a crash loop).
RESTART_LIMIT = 10
RESTART_WINDOW_S = 60.0


def action_for(reason: str, spec: Mapping[str, Any]) -> str:
    """``destroy``, ``restart`` or ``preserve`` for a guest that stopped with ``reason``.

    A suspend without a save is preserved (xl leaves it to the caller too); an
    unknown reason destroys, as xl does.
    """
    if reason == "suspend":
        return "preserve"
    key = REASON_KEY.get(reason)
    if key is None:
        return "destroy"
    name = spec.get(key) or DEFAULT_ACTIONS[key]
    return ACTIONS.get(str(name), "destroy")


def reason_letter(reason: str | None) -> str:
    code = REASON_CODES.get(reason or "", None)
    return REASON_LETTERS[code] if code is not None else "?"


def xl_flags(state: str, reason: str | None = None, blocked: bool = False) -> str:
    """xl's six state letters ``r b p s <reason> d`` for a reported state."""
    if state == "running":
        return "-b----" if blocked else "r-----"
    if state in ("paused", "building"):
        return "--p---"
    if state == "shutdown":
        return f"---s{reason_letter(reason)}-"
    if state == "crashed":
        return "---sc-"
    if state == "dying":
        return "-----d"
    return "------"
