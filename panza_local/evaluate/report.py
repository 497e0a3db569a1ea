"""The evaluation report: a Markdown page with matplotlib PNGs (metrics by configuration with their seed
spread, training loss curves of the adapter, length distributions) and a few example drafts."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import paths
from ..errors import PanzaError

CONFIG_COLOURS = {"stock": "#9e9e9e", "stock+rag": "#64b5f6", "adapter": "#ffb74d", "adapter+rag": "#e53935"}
PLOT_METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "bertscore", "mauve", "bertscore_minilm", "mauve_minilm")
STYLE_METRICS = ("greeting_match", "signoff_match", "vocab_overlap", "length_match")  # all on a 0-1 scale


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never a GUI window from a CLI
    import matplotlib.pyplot as plt

    return plt


def _ran(result: dict) -> list[str]:
    return [c for c, v in result["configs"].items() if v.get("bleu") is not None]


def computed(result: dict, keys=PLOT_METRICS) -> list[str]:
    """The metrics among `keys` that some configuration has a value for (a standard metric whose model is not
    on disk has none)."""
    return [k for k in keys if any(isinstance(v.get(k), (int, float)) for v in result["configs"].values())]


def plot_metrics(result: dict, out: Path, keys=None, name: str = "metrics.png",
                 title: str = "Metrics by configuration (bar: mean over seeds, line: ±1 std, dots: seeds)") -> Path:
    """Grouped bars: one group per metric, one bar per configuration, error bar = std across seeds."""
    plt = _pyplot()
    keys = computed(result) if keys is None else keys
    configs = _ran(result)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(configs), 1)
    for j, c in enumerate(configs):
        entry = result["configs"][c]
        xs = [i + (j - (len(configs) - 1) / 2) * width for i in range(len(keys))]
        means = [_num(entry.get(k)) for k in keys]
        stds = [_num(entry.get(f"{k}_std")) for k in keys]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=c, color=CONFIG_COLOURS.get(c))
        for x, k in zip(xs, keys):
            seeds = [_num(s.get(k)) for s in entry.get("per_seed", {}).values()]
            ax.scatter([x] * len(seeds), seeds, s=8, color="black", zorder=3)
    ax.set_xticks(range(len(keys)), list(keys))
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lengths(result: dict, out: Path) -> Path:
    """Histogram of draft lengths (words) per configuration against the user's real emails."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    refs = result.get("ref_lengths") or []
    series = [("your emails", refs, "black")] + [(c, result["configs"][c].get("lengths") or [],
                                                  CONFIG_COLOURS.get(c)) for c in _ran(result)]
    top = max([max(v) for _, v, _ in series if v] + [10])
    bins = [i * top / 20 for i in range(21)]
    for label, values, colour in series:
        if values:
            ax.hist(values, bins=bins, histtype="step", linewidth=2 if label == "your emails" else 1.3,
                    label=f"{label} (median {sorted(values)[len(values) // 2]})", color=colour, density=True)
    ax.set_xlabel("words")
    ax.set_ylabel("share of emails")
    ax.set_title("Length distribution: drafts vs. the real held-out emails", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "lengths.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves(metrics: dict | None) -> dict[str, list[tuple[float, float]]]:
    """Loss series found in an adapter's recorded metrics: {name: [(step, loss), ...]}.

    Accepts lists of numbers (`train_loss: [...]`), lists of {step, loss | train_loss | val_loss} records
    (`history`, `log`, `losses`, ...), and one level of nesting."""
    out: dict[str, list[tuple[float, float]]] = {}
    if not isinstance(metrics, dict):
        return out

    def add(name, seq):
        if not isinstance(seq, list) or len(seq) < 2:
            return
        if all(isinstance(v, (int, float)) for v in seq):
            out[name] = [(float(i), float(v)) for i, v in enumerate(seq)]
            return
        if all(isinstance(v, dict) for v in seq):
            for key in ("loss", "train_loss", "val_loss", "eval_loss"):
                pts = [(float(d.get("step", d.get("iter", i))), float(d[key])) for i, d in enumerate(seq)
                       if isinstance(d.get(key), (int, float))]
                if len(pts) >= 2:
                    out[key if key != "loss" else name] = pts
        if all(isinstance(v, (list, tuple)) and len(v) == 2 for v in seq):
            out[name] = [(float(a), float(b)) for a, b in seq]

    for k, v in metrics.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if "loss" in k2 or k2 in ("history", "log", "steps"):
                    add(k2, v2)
        elif "loss" in k or k in ("history", "log", "steps"):
            add(k, v)
    before = metrics.get("val_loss_before")
    if isinstance(before, (int, float)) and out.get("val_loss") and out["val_loss"][0][0] > 0:
        out["val_loss"].insert(0, (0.0, float(before)))  # the untrained starting point: where the curve begins
    return out


def adapter_metrics(adapter_id: str | None) -> dict | None:
    """The metrics the training stage recorded for `adapter_id` (registry, then files), or None."""
    if not adapter_id:
        return None
    try:
        from ..train import registry

        m = registry.get(adapter_id).get("metrics")
        if m:
            return json.loads(m) if isinstance(m, str) else m
    except (ImportError, AttributeError, PanzaError, ValueError):
        pass  # no registry or no record of this id: the files it writes are the fallback below
    folder = paths.home() / "adapters" / str(adapter_id)
    for name in ("metrics.json", "train_metrics.json", "config.json"):
        f = folder / name
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if loss_curves(data) or loss_curves(data.get("metrics") if isinstance(data, dict) else None):
                return data if loss_curves(data) else data["metrics"]
    return None


def plot_loss(curves: dict[str, list[tuple[float, float]]], out: Path) -> Path:
    """Training (and validation) loss by step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None,
                markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Adapter training loss", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else 0.0


def _fmt(entry: dict, key: str) -> str:
    v, s = entry.get(key), entry.get(f"{key}_std")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f} ± {s:.3f}" if isinstance(s, (int, float)) else f"{v:.3f}"


def markdown_table(result: dict, keys=None) -> str:
    """The configurations × metrics table (mean ± std across seeds); by default every computed metric."""
    keys = computed(result) or list(PLOT_METRICS[:4]) if keys is None else keys
    lines = ["| configuration | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for c, entry in result["configs"].items():
        if entry.get("bleu") is None:
            lines.append(f"| {c} | " + " | ".join("-" for _ in keys) + " |")
        else:
            lines.append(f"| {c} | " + " | ".join(_fmt(entry, k) for k in keys) + " |")
    return "\n".join(lines)


def write_report(result: dict, out_dir: Path, *, samples: bool = True) -> Path:
    """Write report.md and its PNGs into `out_dir` (0700) and return the Markdown file's path."""
    out = paths.ensure_dir(Path(out_dir).expanduser())
    figs = [("Metrics by configuration", plot_metrics(result, out))]
    if _ran(result):
        figs.append(("Style by configuration", plot_metrics(
            result, out, keys=STYLE_METRICS, name="style.png",
            title="Style agreement with the real email (mean over seeds ± std)")))
        figs.append(("Length distributions", plot_lengths(result, out)))
    curves = loss_curves(adapter_metrics(result.get("adapter")))
    if curves:
        figs.append(("Training loss", plot_loss(curves, out)))
    md = [f"# panza eval: {result['n']} held-out emails × {result['seeds']} seeds", "",
          f"Data: `{result.get('data', '?')}`. Adapter: `{result.get('adapter') or 'none'}`.", "",
          "Scoring models:", "", *scoring_lines(result.get("scoring_models")), "",
          markdown_table(result), "",
          "Style (mean ± std across seeds):", "",
          markdown_table(result, ("length_words", "greeting_match", "signoff_match", "vocab_overlap")), ""]
    for c, why in (result.get("skipped") or {}).items():
        md.append(f"- `{c}` not run: {why}")
    for note in result.get("notes") or []:
        md.append(f"- {note}")
    if not curves:
        md.append("- no training loss curve: the adapter recorded no loss history" if result.get("adapter")
                  else "- no training loss curve: no adapter was evaluated")
    md.append("")
    for title, path in figs:
        md += [f"## {title}", "", f"![{title}]({path.name})", ""]
    if samples and result.get("samples"):
        md += ["## Examples (first seed)", ""]
        for i, s in enumerate(result["samples"], 1):
            md += [f"### {i}. {s['instruction']}", "", "**What you wrote:**", "", _quote(s["reference"]), ""]
            for c in result["configs"]:
                if c in s:
                    md += [f"**{c}:**", "", _quote(s[c]), ""]
    path = out / "report.md"
    paths.write_private(path, "\n".join(md))
    paths.write_private(out / "results.json", json.dumps({k: v for k, v in result.items() if k != "samples"},
                                                         indent=2, default=str))
    return path


def scoring_lines(models) -> list[str]:
    """The report's list of which model each metric used (`bertscore`, `mauve`: the standard ones)."""
    if isinstance(models, str):  # results written before the standard metrics existed
        return [f"- {models}"]
    return [f"- `{k}`: {v}" for k, v in (models or {}).items()]


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line.strip() else ">" for line in (text or "(empty)").strip().splitlines())
