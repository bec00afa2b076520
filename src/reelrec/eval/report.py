"""The report folder of ``reelrec evaluate``: a markdown table and PNG plots of the result document.

* ``report.md``: one row per model (mean, and ± spread over seeds when there are several);
* ``metrics_at_k.png``: precision, recall, NDCG and MAP for K = 1..20, one line per model;
* ``accuracy_vs_diversity.png``: NDCG@K against intra-list genre diversity, one point per model.
"""

from __future__ import annotations

from pathlib import Path

TABLE_METRICS = ("ndcg", "precision", "recall", "map", "map_all", "hr")
WINDOW_NAMES = {"all": "test window: all test events",
                "session": "test window: each test user's first test session"}
EXTRA_METRICS = ("recall@100", "candidate_recall@100", "coverage", "diversity", "novelty")


def _cell(model: dict, key: str) -> str:
    if key not in model:
        return "-"
    std = model.get("std", {}).get(key)
    if std is not None:
        return f"{model[key]:.4f} ± {std:.4f}"
    ci = model.get("ci95", {})
    if isinstance(ci, dict) and key in ci:
        return f"{model[key]:.4f} [{ci[key][0]:.3f}, {ci[key][1]:.3f}]"
    return f"{model[key]:.4f}"


def markdown(doc: dict) -> str:
    k = doc["k"]
    models = doc["models"]
    acc = [f"{m}@{k}" for m in TABLE_METRICS]
    truth = [f"true_{m}@{k}" for m in ("precision", "recall", "ndcg")]
    cols = acc + [c for c in EXTRA_METRICS + tuple(truth) if any(c in m for m in models.values())]
    split = doc["split"] if isinstance(doc["split"], dict) else doc["split"][0]
    lines = [
        f"# Evaluation: {doc['dataset']}, {doc['protocol']}"
        + (f" ({WINDOW_NAMES.get(doc['test_window'], doc['test_window'])})"
           if doc.get("test_window") else "") + f", K = {k}",
        "",
        f"Seeds {', '.join(map(str, doc['seeds']))}; {split['train_interactions']:,} training "
        f"interactions, {split['test_users']:,} test users, {split['relevant']:,} relevant titles"
        + (f"; cut at {split['cutoff']}" if "cutoff" in split else "") + ".",
        "",
        "Cells: mean ± standard deviation over seeds; with one seed, the 95 % bootstrap interval "
        "over test users in brackets.",
        "",
        "| model | " + " | ".join(cols) + " | fit s |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_cell(m, c) for c in cols)
                     + f" | {m.get('fit_s', 0):.1f} |")
    if doc.get("unavailable"):
        lines += ["", "Not scored:"]
        lines += [f"- `{n}`: {why}" for n, why in doc["unavailable"].items()]
    noted = {n: m["notes"] for n, m in models.items() if m.get("notes")}
    if noted:
        lines += ["", "Notes:"]
        lines += [f"- `{n}`: {note}" for n, ns in noted.items() for note in ns]
    lines += _paired_lines(doc)
    lines += ["", "![metrics at K](metrics_at_k.png)", "",
              "![accuracy against diversity](accuracy_vs_diversity.png)", ""]
    return "\n".join(lines)


def _paired_lines(doc: dict) -> list[str]:
    metric, pairs = next(iter(doc.get("paired", {}).items()), (None, {}))
    if not pairs:
        return []
    lines = ["", f"Paired comparisons of {metric} over the same test users (bootstrap "
             "of users, 2,000 replicates): A / B - 1 with its 95 % interval, and the share of "
             "replicates in which A is not better than B.", "",
             "| A vs B | seed | A | B | A / B - 1 | 95 % interval | P(A not better) |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for pair, rows in pairs.items():
        for r in rows:
            lo, hi = r["ci95"]
            lines.append(f"| {pair} | {r['seed']} | {r['a']:.4f} | {r['b']:.4f} | {r['rel']:+.1%} | "
                         f"[{lo:+.1%}, {hi:+.1%}] | {r['p_not_better']:.3f} |")
    return lines


def write_report(doc: dict, out_dir: Path | str) -> list[Path]:
    """Write report.md and the plots into ``out_dir``; returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = out / "report.md"
    md.write_text(markdown(doc), encoding="utf-8")
    written.append(md)

    k = doc["k"]
    title = f"{doc['dataset']} · {doc['protocol']}" + (
        " · first test session" if doc.get("test_window") == "session" else "")
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
    for ax, metric in zip(axes.ravel(), ("precision", "recall", "ndcg", "map")):
        for name, m in doc["models"].items():
            ys = m.get("curves", {}).get(metric)
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, marker=".", label=name)
        ax.set_xlabel("K")
        ax.set_title(f"{metric}@K")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle(title)
    path = out / "metrics_at_k.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    for name, m in doc["models"].items():
        x, y = m.get("diversity", 0.0), m.get(f"ndcg@{k}", 0.0)
        xerr = m.get("std", {}).get("diversity")
        yerr = m.get("std", {}).get(f"ndcg@{k}")
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel(f"intra-list genre diversity @{k}")
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_title(f"accuracy against diversity · {title}")
    ax.grid(alpha=0.3)
    path = out / "accuracy_vs_diversity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
