"""Bench results on disk: results.json (with machine, versions, command), results.md, PNG plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from skutag.bench.machine import machine_info, markdown_header
from skutag.fsio import atomic_path, atomic_write_json, atomic_write_text

COLUMNS = [
    "artifact",
    "precision",
    "device",
    "batch",
    "MB",
    "accuracy",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "images/s",
    "e2e images/s",
    "e2e/model",
]


def table_rows(rows) -> list[list[str]]:
    def number(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return [
        [
            r.artifact,
            r.precision,
            r.device,
            str(r.batch_size),
            number(r.size_mb, 1),
            number(r.accuracy, 3),
            number(r.timing.p50_ms, 2),
            number(r.timing.p90_ms, 2),
            number(r.timing.p99_ms, 2),
            number(r.timing.images_per_s, 1),
            number(r.end_to_end_images_per_s, 1),
            number(r.end_to_end_ratio, 2),
        ]
        for r in rows
    ]


def write_results(out: Path, rows) -> list[Path]:
    """Write every result file; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info("torch", "torchvision", "onnxruntime-gpu", "onnxruntime", "onnx", "pillow", "numpy")
    atomic_write_json(out / "results.json", {"machine": info, "results": [r.to_dict() for r in rows]})
    lines = [
        "# skutag bench",
        "",
        markdown_header(info),
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    return [out / "results.json", out / "results.md", *_plots(out, rows)]


def _plots(out: Path, rows) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    series = defaultdict(list)
    for r in rows:
        series[f"{r.artifact} ({r.device})"].append(r)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in series.items():
        group = sorted(group, key=lambda r: r.batch_size)
        ax.plot(
            [r.batch_size for r in group], [r.timing.images_per_s for r in group], marker="o", label=label
        )
    ax.set(
        xscale="log", xlabel="batch size", ylabel="images/s (model only)", title="Throughput by batch size"
    )
    ax.set_xticks(
        sorted({r.batch_size for r in rows}), labels=[str(b) for b in sorted({r.batch_size for r in rows})]
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "throughput.png"))

    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows)), 4.5))
    labels = [f"{r.artifact}\n{r.device} b{r.batch_size}" for r in rows]
    positions = range(len(rows))
    for offset, (name, attr) in zip(
        (-0.25, 0, 0.25), (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms")), strict=True
    ):
        ax.bar(
            [p + offset for p in positions], [getattr(r.timing, attr) for r in rows], width=0.25, label=name
        )
    ax.set_xticks(list(positions), labels=labels, fontsize=7, rotation=30, ha="right")
    ax.set(ylabel="ms per batch (log)", title="Model-only latency percentiles", yscale="log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "latency.png"))
    plt.close("all")
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
