"""Hospes benchmarks: one command (``python bench/run.py``) reproduces every figure.

Modules:
  stats    min / median / spread of repeated samples
  parse    console and ``hospes run --stats`` output -> numbers
  model    the results document (measurements, exit counts, boot status, memory)
  report   results -> markdown table, JSON, and the table section of docs/benchmarks.md
  plots    results -> PNG plots (matplotlib, the ``bench`` extra)
  build    the C programs, the PV null-hypercall guest and the bench initramfs
  runner   running a process while timestamping console markers
  machine  what machine the figures came from
  suites   the measurements themselves
  cli      the command line (``bench/run.py``)

Timing code lives only here, never in the pass/fail tests; tests/test_bench_report.py
checks the parsing and rendering without running KVM.
"""
