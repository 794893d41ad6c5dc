"""The configuration of a domain restored from a save file, with ``xl create``-style overrides.

A save file carries the spec the domain ran with (``DomainSpec.to_dict``). The
overrides are applied as ``create`` applies them to a config file -- each one a
setting in xl.cfg's grammar, read by ``DomainSpec.from_config`` -- on top of the
saved spec written back as settings. ``disk``/``vif`` overrides replace the
saved devices (``+=`` appends to them). What the saved guest itself depends on
(memory, vCPUs, kernel) cannot change: such an override is refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from hospes.toolstack.spec import DomainSpec
from hospes.toolstack.xlcfg import ConfigError, List, parse_overrides

#: Fields fixed by the saved guest's memory image and CPU state.
FIXED = ("type", "memory", "maxmem", "vcpus", "maxvcpus", "kernel", "ramdisk", "cmdline")
#: The xl keys that set them.
FIXED_KEYS = frozenset(FIXED) | {"builder", "root", "extra"}
DEVICE_KEYS = {"disk": "disks", "vif": "vifs"}


def _settings(spec: DomainSpec) -> dict[str, Any]:
    """The saved spec as xl.cfg settings (plain values), devices left out."""
    values: dict[str, Any] = {key: value for key, value in spec.to_dict().get("extra_keys", {}).items()}
    for name in ("name", "uuid", "type", "memory", "maxmem", "vcpus", "maxvcpus", "cpu_weight", "cap",
                 "kernel", "ramdisk", "cmdline", "on_poweroff", "on_reboot", "on_crash", "on_watchdog",
                 "on_soft_reset"):
        value = getattr(spec, name)
        if value is not None:
            values[name] = value if isinstance(value, (int, str)) else str(value)
    if spec.cpus is not None:
        values["cpus"] = list(spec.cpus) if isinstance(spec.cpus, tuple) else spec.cpus
    return values


def restored_spec(saved: DomainSpec, overrides: Sequence[str]) -> DomainSpec:
    """``saved`` with ``overrides`` applied; ConfigError naming a bad or refused override."""
    if not overrides:
        return saved
    given = parse_overrides(list(overrides))
    refused = sorted(FIXED_KEYS & set(given))
    if refused:
        raise ConfigError(f"{', '.join(refused)} cannot change on restore: the saved guest was built with "
                          "them (override other keys, e.g. name=, disk=, vif=, on_crash=)")
    new = DomainSpec.from_config(_settings(saved), list(overrides), source="<save file>")
    changed = [name for name in FIXED if getattr(new, name) != getattr(saved, name)]
    if changed:
        raise ConfigError(f"{', '.join(changed)} cannot change on restore: the saved guest was built "
                          "with them (override other keys, e.g. name=, disk=, vif=, on_crash=)")
    devices: dict[str, Any] = {}
    for key, field_name in DEVICE_KEYS.items():
        value = given.get(key)
        if value is None:
            devices[field_name] = getattr(saved, field_name)
        elif isinstance(value, List) and value.appended:
            kept = getattr(saved, field_name)
            added = getattr(new, field_name)
            if field_name == "vifs":   # an appended vif without devid= follows the saved ones
                added = tuple(replace(v, devid=len(kept) + i) if v.devid == i else v for i, v in enumerate(added))
            devices[field_name] = kept + added
        else:
            devices[field_name] = getattr(new, field_name)
    return replace(new, **devices)


__all__ = ["restored_spec"]
