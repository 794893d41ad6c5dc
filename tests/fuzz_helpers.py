"""Settings shared by the fuzz tests (tests/test_fuzz_*.py; tests/fuzz/README.md).

Every fuzzer runs a bounded, seeded amount of work in the normal test run.
``HOSPES_FUZZ_SCALE=N`` multiplies that work (the README's "run longer"),
``HOSPES_FUZZ_SEED=S`` picks another sequence; a failure names the seed and
the input, and the finding becomes a plain regression test with that input.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed

SCALE = max(1, int(os.environ.get("HOSPES_FUZZ_SCALE", "1")))


def fuzz_seed(default: int) -> int:
    """The seed of this run: HOSPES_FUZZ_SEED, else the fuzzer's own fixed default."""
    return int(os.environ.get("HOSPES_FUZZ_SEED", str(default)))


def scaled(n: int) -> int:
    return n * SCALE


def fuzz_settings(examples: int, seed: int) -> Callable[[Any], Any]:
    """hypothesis settings for one fuzz test: ``examples`` examples (times the scale), seeded,
    no example database in the tree, no deadline (a slow input is not a failure; a hang is,
    through pytest-timeout), the seed printed with any failing example."""

    def apply(fn: Any) -> Any:
        fn = settings(
            max_examples=scaled(examples),
            deadline=None,
            database=None,
            derandomize=False,
            print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.filter_too_much, HealthCheck.large_base_example],
        )(fn)
        return hypothesis_seed(seed)(fn)

    return apply
