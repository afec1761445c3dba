"""PNG charts of the benchmark results in ``bench/results/`` (matplotlib, Agg backend):

- ``docs/img/ingest.png`` from ``ingest.json`` (``bench/ingest.py``): tokens/s, chunks/s
  and files/s of the service next to the bare-pipeline ceiling;
- ``docs/img/search_latency.png`` from ``search_scale.json`` (``bench/search_scale.py``):
  p50 and p99 search latency against store size, over gRPC (ranker none and auto) and
  in-process ``VectorIndex.knn``.

    .venv/bin/python -m bench.charts

A missing results file skips its chart (with a note); the exit code is 1 if none was drawn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from bench.results import RESULTS_DIR, load_results

IMG_DIR = Path(__file__).resolve().parent.parent / "docs" / "img"
DPI = 150
BARE_COLOR = "#9e9e9e"
SERVICE_COLOR = "#1f77b4"
PCTS = ("p50", "p99")
SEARCH_SERIES = (  # key in search_scale.json, legend label, colour, marker, label offset
    # Value labels: above the gRPC points, below the in-process ones (always the lowest).
    ("grpc_none", "gRPC SearchVectorStore, ranker=none (vector)", "#1f77b4", "o", 7),
    ("grpc_auto", "gRPC SearchVectorStore, ranker=auto (vector + tantivy BM25)", "#d62728", "s", 7),
    ("knn", "in-process VectorIndex.knn (no service)", "#2ca02c", "^", -14),
)


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # Agg: rendering needs no display
    return figure


def count_label(n: float) -> str:
    """10000 → 10k, 1000000 → 1M, 2500 → 2.5k."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def rate_label(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def subtitle(data: dict[str, Any]) -> str:
    machine = data.get("machine", {})
    created = str(data.get("created", ""))[:10]
    return f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}; {created}"


# -- ingest ----------------------------------------------------------------------------------


def ingest_chart(data: dict[str, Any], out: Path) -> None:
    runs = data["runs"]
    bare, service = runs["bare"], runs["service"]
    metrics = (
        ("tokens", "tokens/s", "Tokens per second"),
        ("chunks", "chunks/s", "Chunks per second"),
        ("files", "files/s", "Files per second"),
    )
    figure = new_figure(12, 5.4)
    axes = figure.subplots(1, len(metrics))
    for ax, (key, unit, title) in zip(axes, metrics, strict=True):
        rates = [bare[key] / bare["seconds"], service[key] / service["seconds"]]
        bars = ax.bar(
            ["bare pipeline\n(ceiling)", "service\n(gRPC)"],
            rates,
            color=[BARE_COLOR, SERVICE_COLOR],
            width=0.6,
        )
        ax.bar_label(bars, labels=[rate_label(r) for r in rates], padding=3, fontsize=9)
        ax.set_title(f"{title}\nservice = {rates[1] / rates[0]:.0%} of the ceiling", fontsize=11)
        ax.set_ylabel(unit)
        ax.set_ylim(0, max(rates) * 1.18)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: count_label(v)))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    corpus = data.get("corpus", {})
    figure.suptitle(
        "Ingest throughput of the service against the bare-pipeline ceiling\n"
        "service: CreateFileBatch until the last WatchFileBatch message (upload excluded), "
        f"{data.get('workers', '?')} ingest workers\n"
        "ceiling: the same chunking, embedding and hnswlib add in one process, no service\n"
        f"corpus: {corpus.get('files', 0):,} files, {corpus.get('bytes', 0) / 1e6:.1f} MB, "
        f"{service['chunks']:,} chunks, {count_label(service['tokens'])} tokens; "
        f"{subtitle(data)}",
        fontsize=10.5,
    )
    figure.savefig(out)


# -- search latency ----------------------------------------------------------------------------


def search_chart(data: dict[str, Any], out: Path) -> None:
    sizes = sorted(data["sizes"], key=lambda s: s["chunks"])
    chunks = [s["chunks"] for s in sizes]
    settings = data.get("settings", {})
    every = [s["latency_ms"][key][p] for s in sizes for key, *_ in SEARCH_SERIES for p in PCTS]
    figure = new_figure(12, 5.4)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, percentile in zip(axes, PCTS, strict=True):
        for key, label, color, marker, offset in SEARCH_SERIES:
            values = [s["latency_ms"][key][percentile] for s in sizes]
            ax.plot(chunks, values, marker=marker, color=color, label=label, linewidth=2)
            for x, y in zip(chunks, values, strict=True):
                ax.annotate(
                    f"{y:.2f}" if y < 10 else f"{y:.0f}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, offset),
                    ha="center",
                    fontsize=8,
                    color=color,
                )
        style_size_axis(ax, chunks)
        ax.set_yscale("log")
        ax.set_ylim(min(every) / 1.8, max(every) * 1.8)  # room for the value labels
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"{percentile} latency", fontsize=11)
        ax.set_xlabel("store size (chunks, log scale)")
        ax.grid(which="both", alpha=0.3)
    axes[0].set_ylabel("latency per query (ms, log scale)")
    axes[0].legend(loc="upper left", fontsize=8.5)
    figure.suptitle(
        f"Search latency against store size: top {settings.get('k', 10)}, one client, "
        f"{settings.get('queries', '?')} short queries per point\n"
        f"hnswlib M={settings.get('hnsw_m', '?')}, ef_search={settings.get('hnsw_ef_search', '?')}"
        f"; hash embedder, {settings.get('dimensions', '?')} dimensions; {subtitle(data)}"
        + load_note(sizes),
        fontsize=11,
    )
    figure.savefig(out)


def load_note(sizes: list[dict[str, Any]]) -> str:
    """The machine's 1-minute load average as each size's searches started, if recorded."""
    loads = [
        f"{count_label(s['chunks'])} {s['load_average'][0]:.1f}"
        for s in sizes
        if "load_average" in s
    ]
    return (
        "\nload average as the searches started (other processes skew it): " + ", ".join(loads)
        if loads
        else ""
    )


def style_size_axis(ax: Axes, chunks: list[int]) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([float(c) for c in chunks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: count_label(v)))
    if len(chunks) > 1:
        ax.set_xlim(min(chunks) / 1.6, max(chunks) * 1.6)


# -- main ----------------------------------------------------------------------------------------

CHARTS: tuple[tuple[str, str, Callable[[dict[str, Any], Path], None]], ...] = (
    ("ingest.json", "ingest.png", ingest_chart),
    ("search_scale.json", "search_latency.png", search_chart),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON results folder")
    parser.add_argument("--out", type=Path, default=IMG_DIR, help="folder for the PNG files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    drawn = 0
    for source, target, draw in CHARTS:
        path = args.results / source
        if not path.exists():
            print(f"skipped {target}: no {path}", file=sys.stderr)
            continue
        draw(load_results(path), args.out / target)
        print(f"wrote {args.out / target}")
        drawn += 1
    if not drawn:
        sys.exit(1)


if __name__ == "__main__":
    main()
