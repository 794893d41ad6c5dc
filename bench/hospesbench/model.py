"""The results document one bench run produces (and results.json holds)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hospesbench.stats import Summary, median_counts, summarize

# Environments a figure can come from.
ENV_FLOOR = "c-floor"      # bench/c/kvm_exit.c driving /dev/kvm directly
ENV_HOSPES = "hospes"      # a Hospes PV guest
ENV_NATIVE = "native"      # the host itself
ENV_TCG = "qemu-tcg"       # qemu-system-x86_64 -M microvm,accel=tcg
ENV_QKVM = "qemu-kvm"      # qemu-system-x86_64 -M microvm,accel=kvm

SCHEMA = "hospes-bench/1"


@dataclass
class Measurement:
    """Samples of one figure: ``suite``/``name`` measured in ``env``, in ``unit`` ("ns" or "s")."""

    suite: str
    name: str
    env: str
    unit: str
    samples: list[float]
    note: str = ""

    def summary(self) -> Summary:
        return summarize(self.samples)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary().to_dict() if self.samples else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        return cls(d["suite"], d["name"], d["env"], d["unit"], [float(x) for x in d["samples"]],
                   d.get("note", ""))


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    # workload -> list of per-run exit counts ({kind: n}) from `hospes run --stats`
    exit_runs: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    # "<suite>/<env>" -> a sentence when a figure could not be had ("failed after 120 s: ...")
    status: dict[str, str] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    devices: str = ""
    # env -> BENCHINFO facts seen there (e.g. the guest clocksource)
    info: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # osbench test -> {"ops": n, "ns_per_op": t, "per_op": {kind: exits per op}}
    op_exits: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- building -----------------------------------------------------------

    def add(self, suite: str, name: str, env: str, unit: str, samples: list[float], note: str = "") -> None:
        """Add samples (appending to an existing figure of the same suite/name/env)."""
        if not samples:
            return
        existing = self.get(suite, name, env)
        if existing is not None:
            existing.samples.extend(float(s) for s in samples)
            return
        self.measurements.append(Measurement(suite, name, env, unit, [float(s) for s in samples], note))

    def add_exit_run(self, workload: str, counts: dict[str, int]) -> None:
        self.exit_runs.setdefault(workload, []).append(dict(counts))

    # --- reading ------------------------------------------------------------

    def get(self, suite: str, name: str, env: str) -> Measurement | None:
        for m in self.measurements:
            if (m.suite, m.name, m.env) == (suite, name, env):
                return m
        return None

    def summary(self, suite: str, name: str, env: str) -> Summary | None:
        m = self.get(suite, name, env)
        return m.summary() if m is not None and m.samples else None

    def exit_medians(self) -> dict[str, dict[str, int]]:
        return {w: median_counts(runs) for w, runs in self.exit_runs.items() if runs}

    # --- JSON ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "meta": self.meta,
            "measurements": [m.to_dict() for m in self.measurements],
            "exit_counts": {w: {"runs": runs, "median": median_counts(runs)}
                            for w, runs in self.exit_runs.items()},
            "status": self.status,
            "memory": self.memory,
            "devices": self.devices,
            "info": self.info,
            "errors": self.errors,
            "op_exits": self.op_exits,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Results":
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} document (schema {d.get('schema')!r})")
        return cls(
            meta=d.get("meta", {}),
            measurements=[Measurement.from_dict(m) for m in d.get("measurements", [])],
            exit_runs={w: [dict(r) for r in v.get("runs", [])] for w, v in d.get("exit_counts", {}).items()},
            status=dict(d.get("status", {})),
            memory=dict(d.get("memory", {})),
            devices=d.get("devices", ""),
            info={k: dict(v) for k, v in d.get("info", {}).items()},
            errors=list(d.get("errors", [])),
            op_exits={k: dict(v) for k, v in d.get("op_exits", {}).items()},
        )

    @classmethod
    def from_json(cls, text: str) -> "Results":
        return cls.from_dict(json.loads(text))
