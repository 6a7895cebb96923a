"""Every benchmark's PNG (matplotlib, the optional `catalens[bench]` extra); nothing else imports matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.ann import RECALL_TARGET, AnnBench
from bench.index import IndexBench
from bench.query import SCENARIOS, QueryBench
from bench.rerank import RerankBench
from bench.update import UpdateBench
from bench.versus import VersusBench


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _machine_line(machine: dict[str, Any]) -> str:
    return f"{machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores"


def plot_index(result: IndexBench, path: Path) -> None:
    plt = _pyplot()
    labels = ["end to end", "image stage", "model only", "decode only"]
    values = [result.end_to_end_ips, result.image_stage_ips, result.model_only_ips, result.decode_only_ips]
    colours = ["#1f77b4", "#6baed6", "#2ca02c", "#ff7f0e"]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    bars = ax.barh(labels[::-1], values[::-1], color=colours[::-1])
    for bar, value in zip(bars, values[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.1f}", va="center", fontsize=9)
    ax.axvline(result.shared_cpu_bound_ips, color="grey", ls="--", lw=1,
               label=f"shared-CPU bound {result.shared_cpu_bound_ips:,.0f}")
    ax.set_xlabel("images / second")
    ax.set_xlim(0, max(values) * 1.2)
    ax.set_title(f"Indexing throughput: {result.model}, {result.images} images, batch {result.batch_size}, "
                 f"{result.torch_threads} thr + {result.decode_workers} dec\n{_machine_line(result.machine)}",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_query(result: QueryBench, path: Path) -> None:
    """Latency percentiles per scenario; with several engine pairs, one panel each (QPS and errors in the labels)."""
    plt = _pyplot()
    panels = result.by_engine or {result.engine: {name: getattr(result, name) for name in SCENARIOS}}
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.8 * len(panels)), squeeze=False)
    for ax, (engine, scenario_stats) in zip(axes[:, 0], panels.items()):
        stats = {name: s for name, s in scenario_stats.items() if s}
        names = list(stats)
        width = 0.26
        for j, (q, colour) in enumerate((("p50_ms", "#2ca02c"), ("p95_ms", "#ff7f0e"), ("p99_ms", "#d62728"))):
            xs = [i + (j - 1) * width for i in range(len(names))]
            ax.bar(xs, [stats[n][q] or 0 for n in names], width, label=q.replace("_ms", ""), color=colour)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{n}\n{stats[n]['qps']:.0f} QPS, {stats[n]['errors']} err" for n in names], fontsize=7)
        ax.set_ylabel(f"{engine}\nlatency (ms)")
        if "text_rerank" not in stats:
            ax.text(0.99, 0.97, "text_rerank: absent", transform=ax.transAxes, ha="right", va="top", fontsize=8)
        ax.legend(fontsize=8, loc="upper left")
    axes[0, 0].set_title(f"Query latency: {result.model}, {result.n} products, {result.concurrency} clients, "
                         f"server threads {result.server_threads}\n{_machine_line(result.machine)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ann(result: AnnBench, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    by_factory: dict[str, list[dict[str, Any]]] = {}
    for r in result.runs:
        by_factory.setdefault(r["factory"], []).append(r)
    for factory, rows in by_factory.items():
        xs = [r["recall@10"] for r in rows]
        ys = [r["qps"] for r in rows]
        ax.plot(xs, ys, marker="o", label=f"{factory} ({rows[0]['bytes_per_vector']:.0f} B/vec, "
                                          f"build {rows[0]['build_s']:.0f}s)")
        for r in rows:
            if r["params"]:
                key, value = next(iter(r["params"].items()))
                ax.annotate(f"{'ef' if key == 'efSearch' else 'np'}={value}", (r["recall@10"], r["qps"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(RECALL_TARGET, color="grey", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact search")
    ax.set_ylabel("queries / second (one query per call)")
    ax.set_title(f"ANN: {result.n:,} x {result.dim} clustered vectors, inner product, {result.threads} threads\n"
                 f"{_machine_line(result.machine)}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rerank(result: RerankBench, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    values = [result.score_p50_ms, result.score_p95_ms, result.feature_ms_per_image * result.top_n]
    ax.barh(["score p50", "score p95", f"features x{result.top_n}\n(index time)"], values, color="#4f46e5")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.1f} ms", va="center", fontsize=8)
    ax.set_xlabel("milliseconds")
    ax.set_title(f"{result.reranker[:60]}\ntop {result.top_n} - {_machine_line(result.machine)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_update(result: UpdateBench, path: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    kinds = ["upsert", "patch", "delete"]
    width = 0.2
    series = [("live p50", {k: getattr(result, k)["p50_ms"] for k in kinds}, "#2ca02c"),
              ("live p99", {k: getattr(result, k)["p99_ms"] for k in kinds}, "#d62728")]
    if result.baseline:
        for q, colour in (("p50_ms", "#9467bd"), ("p99_ms", "#8c564b")):
            series.append((f"republish {q[:3]}", {k: (result.baseline.get(k) or {}).get(q, 0) for k in kinds}, colour))
    for j, (label, values, colour) in enumerate(series):
        left.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(kinds))], [values[k] for k in kinds],
                 width, label=label, color=colour)
    left.set_xticks(range(len(kinds)))
    left.set_xticklabels(kinds)
    left.set_ylabel("request -> visible in search (ms)")
    if result.baseline:
        left.set_yscale("log")
    left.legend(fontsize=7)
    sizes = list(result.search_live)
    for q, colour in (("p50_ms", "#2ca02c"), ("p99_ms", "#d62728")):
        right.plot([int(s) for s in sizes], [result.search_live[s][q] for s in sizes], "o-", color=colour,
                   label=q.replace("_ms", ""))
    right.set_xlabel("live changes over the snapshot")
    right.set_ylabel("search latency (ms)")
    right.legend(fontsize=8)
    fig.suptitle(f"Live updates: {result.model}, {result.n} products\n{_machine_line(result.machine)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_versus(result: VersusBench, path: Path) -> None:
    """Whole-process images/s of both tools on the same images and weights."""
    plt = _pyplot()
    labels = [f"catalens index build\n({result.catalens_runtime})", "clip-retrieval inference"]
    values = [result.catalens_ips, result.clip_retrieval_ips]
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    bars = ax.barh(labels[::-1], values[::-1], color=["#ff7f0e", "#1f77b4"])
    for bar, value, wall in zip(bars, values[::-1], [result.clip_retrieval_wall_s, result.catalens_wall_s]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.1f} img/s ({wall:.0f} s)",
                va="center", fontsize=9)
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_xlabel("images / second, whole process")
    ax.set_title(f"{result.model}, {result.images} images, same weights: catalens {result.speedup:.2f}x\n"
                 f"{_machine_line(result.machine)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
