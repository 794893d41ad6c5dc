"""Summaries of repeated samples: min, median, max and the spread between them.

Machines are noisy, so every figure is a set of samples; the report shows the
minimum (the best the path can do), the median (what you typically get) and
the spread, ``(max - min) / median``, so an unstable figure is visible as one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Iterable


@dataclass(frozen=True)
class Summary:
    n: int
    min: float
    median: float
    max: float
    mean: float
    stdev: float

    @property
    def spread(self) -> float:
        """(max - min) / median: 0.12 means the samples span 12% of the median."""
        if self.n == 0 or self.median == 0:
            return 0.0
        return (self.max - self.min) / abs(self.median)

    def scaled(self, factor: float) -> "Summary":
        """The same summary in another unit (every figure times ``factor``)."""
        return Summary(self.n, self.min * factor, self.median * factor, self.max * factor,
                       self.mean * factor, self.stdev * abs(factor))

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["spread"] = self.spread
        return d


def summarize(samples: Iterable[float]) -> Summary:
    """Summary of ``samples``; raises ValueError for an empty or non-finite set."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("no samples to summarize")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"non-finite sample in {values!r}")
    return Summary(
        n=len(values),
        min=min(values),
        median=statistics.median(values),
        max=max(values),
        mean=statistics.fmean(values),
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
    )


def ratio(a: Summary, b: Summary) -> float:
    """Median of ``a`` over median of ``b`` (how many times slower ``a`` is)."""
    if b.median == 0:
        return math.inf
    return a.median / b.median


def median_counts(runs: list[dict[str, int]]) -> dict[str, int]:
    """Per-key median over several runs' counters (a key missing from a run counts 0)."""
    keys = sorted({k for run in runs for k in run})
    out: dict[str, int] = {}
    for k in keys:
        out[k] = int(round(statistics.median([run.get(k, 0) for run in runs])))
    return out


def per_op_counts(counts: dict[str, int], baseline: dict[str, int], ops: int) -> dict[str, float]:
    """Counters per operation: (counts - baseline) / ops, for every key in either run.

    Negative values (a counter that ran lower than in the baseline: timer
    upcalls, kicks) are kept, so noise stays visible rather than hidden.
    """
    if ops <= 0:
        raise ValueError(f"ops must be positive, got {ops}")
    keys = sorted(set(counts) | set(baseline))
    return {k: (counts.get(k, 0) - baseline.get(k, 0)) / ops for k in keys}
