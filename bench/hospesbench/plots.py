"""Results -> PNG plots (matplotlib, installed by the ``bench`` extra).

Every plot shows each sample as a dot and the median as a bar, so the spread
is visible next to the figure.
"""

from __future__ import annotations

from pathlib import Path

from hospesbench.model import ENV_FLOOR, ENV_HOSPES, ENV_NATIVE, ENV_QKVM, ENV_TCG, Results
from hospesbench.parse import exit_kind_family, is_exit
from hospesbench.report import BOOT_ENVS, COMPUTE, OS, TRANSITIONS, WORKLOADS

COLORS = {ENV_FLOOR: "#7f7f7f", ENV_HOSPES: "#1f77b4", ENV_NATIVE: "#2ca02c", ENV_TCG: "#ff7f0e",
          ENV_QKVM: "#d62728"}
ENV_LABEL = {ENV_FLOOR: "C floor", ENV_HOSPES: "Hospes", ENV_NATIVE: "native", ENV_TCG: "QEMU TCG",
             ENV_QKVM: "QEMU KVM"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped(ax, groups: list[str], envs: list[str], samples: dict[tuple[str, str], list[float]],
             scale: float = 1.0) -> None:
    """Bars of medians per (group, env), with every sample drawn as a dot."""
    import statistics

    width = 0.8 / max(1, len(envs))
    for j, env in enumerate(envs):
        xs, meds = [], []
        for i, g in enumerate(groups):
            vals = [v * scale for v in samples.get((g, env), [])]
            if not vals:
                continue
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            meds.append(statistics.median(vals))
            ax.scatter([x] * len(vals), vals, s=9, color="black", zorder=3, alpha=0.6)
        if xs:
            ax.bar(xs, meds, width=width * 0.9, color=COLORS.get(env), label=ENV_LABEL.get(env, env), zorder=2)
    ax.set_xticks(range(len(groups)))
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8)


def _samples(res: Results, suite: str) -> dict[tuple[str, str], list[float]]:
    return {(m.name, m.env): m.samples for m in res.measurements if m.suite == suite}


def _save(plt, fig, path: Path) -> bool:  # noqa: ANN001 - matplotlib is imported lazily
    """Lay out, write the PNG and free the figure; a plot function's last step."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_transitions(res: Results, path: Path) -> bool:
    plt = _plt()
    data = _samples(res, "transitions")
    rows = [(n, e, label) for n, e, label in TRANSITIONS if (n, e) in data]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.5))
    import statistics

    for i, (n, e, _) in enumerate(rows):
        vals = [v / 1000 for v in data[(n, e)]]
        ax.barh(i, statistics.median(vals), color=COLORS[e], zorder=2)
        ax.scatter(vals, [i] * len(vals), s=9, color="black", zorder=3, alpha=0.6)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label.replace("`", "") for _, _, label in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("us per round trip (bar: median; dots: samples)")
    ax.set_title("Exit floor vs Hospes transitions")
    ax.grid(axis="x", alpha=0.3, zorder=0)
    return _save(plt, fig, path)


def plot_boot(res: Results, path: Path) -> bool:
    plt = _plt()
    data = _samples(res, "boot")
    envs = [e for e, _ in BOOT_ENVS if (("userspace", e) in data)]
    if not envs:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = ["userspace", "poweroff"]
    _grouped(ax, groups, envs, data)
    ax.set_xticklabels(["first userspace line", "poweroff"])
    ax.set_ylabel("seconds from process start")
    ax.set_title("Boot: Debian cloud kernel + busybox initramfs, `uname -a`")
    return _save(plt, fig, path)


def plot_cpu(res: Results, path: Path) -> bool:
    plt = _plt()
    data = _samples(res, "cpu")
    groups = [n for n, _ in COMPUTE if any((n, e) in data for e in (ENV_NATIVE, ENV_HOSPES, ENV_TCG))]
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    _grouped(ax, groups, [ENV_NATIVE, ENV_HOSPES, ENV_TCG], data)
    ax.set_xticklabels([g.replace("compute_", "") for g in groups])
    ax.set_ylabel("seconds (fixed work)")
    ax.set_title("CPU-bound kernels")
    return _save(plt, fig, path)


def plot_os(res: Results, path: Path) -> bool:
    plt = _plt()
    data = _samples(res, "os")
    groups = [n for n, _ in OS if any((n, e) in data for e in (ENV_NATIVE, ENV_HOSPES, ENV_TCG))]
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _grouped(ax, groups, [ENV_NATIVE, ENV_HOSPES, ENV_TCG], data, scale=1e-3)
    ax.set_yscale("log")
    ax.set_xticklabels([g.replace("os_", "") for g in groups], fontsize=8)
    ax.set_ylabel("us per operation (log)")
    ax.set_title("OS microbenchmarks")
    return _save(plt, fig, path)


def plot_exits(res: Results, path: Path) -> bool:
    plt = _plt()
    med = res.exit_medians()
    workloads = [(w, t) for w, t in WORKLOADS if w in med]
    if not workloads:
        return False
    families = sorted({exit_kind_family(k) for w, _ in workloads for k in med[w] if is_exit(k)})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottoms = [0.0] * len(workloads)
    cmap = plt.get_cmap("tab10")
    for fi, fam in enumerate(families):
        vals = [sum(n for k, n in med[w].items() if exit_kind_family(k) == fam) for w, _ in workloads]
        ax.bar(range(len(workloads)), vals, bottom=bottoms, label=fam, color=cmap(fi % 10))
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([t.replace("`", "") for _, t in workloads], fontsize=8)
    ax.set_ylabel("exits (median over runs)")
    ax.set_title("Exits to Hospes by kind (resume paths such as the writer not included)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def write_plots(res: Results, out_dir: Path) -> list[Path]:
    """Write every plot there is data for into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in (("transitions", plot_transitions), ("boot", plot_boot), ("cpu", plot_cpu),
                     ("os", plot_os), ("exits", plot_exits)):
        path = out_dir / f"{name}.png"
        if fn(res, path):
            written.append(path)
    return written
