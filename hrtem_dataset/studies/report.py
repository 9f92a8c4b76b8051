"""The study report: ``study.json`` (every metric of every model), ``README.md`` (the study card) and
``plots/<evaluation set>.png`` (metric vs variant, mean ± std over seeds) — a folder laid out like a Hub
dataset repo (card with YAML front matter), re-rendered from ``study.json`` alone by :func:`render_report`.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

from ..errors import InputError
from ..io import atomic_path, atomic_write_bytes, atomic_write_text

METRICS = ("f1", "iou", "precision", "recall", "f1_image_mean", "detection_f1")
STUDY_JSON = "study.json"
MATRIX_PARQUET = "data/matrix.parquet"
"""The evaluation matrix as a table (one row per model × evaluation set): the folder is a Hub dataset repo."""


def _num(x) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def summarize(matrix: list[dict], metrics=METRICS) -> dict:
    """``{variant: {set: {metric: {mean, std, n, values}}}}`` over seeds (sample std, 0 for one seed)."""
    vals: dict = {}
    for row in matrix:
        for m in metrics:
            x = _num((row.get("metrics") or {}).get(m))
            if x is not None:
                vals.setdefault(row["variant"], {}).setdefault(row["set"], {}).setdefault(m, []).append(x)
    out: dict = {}
    for v, by_set in vals.items():
        for s, by_m in by_set.items():
            for m, xs in by_m.items():
                n = len(xs)
                mean = sum(xs) / n
                std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
                out.setdefault(v, {}).setdefault(s, {})[m] = {"mean": mean, "std": std, "n": n, "values": xs}
    return out


def _cell(summary: dict, v: str, s: str, m: str) -> str:
    c = summary.get(v, {}).get(s, {}).get(m)
    return f"{c['mean']:.3f} ± {c['std']:.3f}" if c else "—"


def table(payload: dict, metric: str | None = None) -> str:
    """Markdown table: one row per variant, one column per evaluation set, mean ± std over seeds."""
    metric = metric or payload["metric"]
    summary, sets = payload["summary"], [s["id"] for s in payload["evaluation_sets"]]
    head = f"| variant ({metric}, mean ± std over seeds) | " + " | ".join(sets) + " |"
    lines = [head, "|" + "---|" * (len(sets) + 1)]
    for v in payload["variants"]:
        lines.append(f"| {v['name']} | " + " | ".join(_cell(summary, v["name"], s, metric) for s in sets) + " |")
    return "\n".join(lines)


def finding(payload: dict) -> str:
    """One paragraph from the numbers: the best variant per evaluation set and its margin."""
    metric, summary = payload["metric"], payload["summary"]
    parts = []
    for s in [x["id"] for x in payload["evaluation_sets"]]:
        ranked = sorted(((summary[v["name"]][s][metric], v["name"]) for v in payload["variants"]
                         if s in summary.get(v["name"], {}) and metric in summary[v["name"]][s]),
                        key=lambda t: -t[0]["mean"])
        if not ranked:
            continue
        best, name = ranked[0]
        if len(ranked) == 1:
            parts.append(f"on {s} only {name} was evaluated ({metric} {best['mean']:.3f})")
            continue
        second, name2 = ranked[1]
        worst, name_w = ranked[-1]
        margin = best["mean"] - second["mean"]
        spread = math.hypot(best["std"], second["std"])
        sig = "within the seed spread" if margin <= spread else "larger than the seed spread"
        worst_text = (f" and {best['mean'] - worst['mean']:.3f} above the worst, {name_w}"
                      if len(ranked) > 2 else "")
        parts.append(f"on {s}, {name} is best with {metric} {best['mean']:.3f} ± {best['std']:.3f}, "
                     f"{margin:.3f} above {name2} ({sig}, ±{spread:.3f}){worst_text}")
    if not parts:
        return "No model was evaluated."
    n = len(payload["variants"])
    text = (f"Across {n} variants × {payload['seeds']} seeds: " + "; ".join(parts) + ".")
    return text[0].upper() + text[1:]


def plot_png(payload: dict, set_id: str, metric: str | None = None) -> bytes:
    """Metric vs variant with error bars (mean ± std over seeds) and the single seeds, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric = metric or payload["metric"]
    summary = payload["summary"]
    names = [v["name"] for v in payload["variants"]]
    quantity = payload.get("axis") == "quantity"
    xs = [v.get("max_structures") for v in payload["variants"]] if quantity else list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.4), dpi=100)
    for x, name in zip(xs, names, strict=True):
        c = summary.get(name, {}).get(set_id, {}).get(metric)
        if not c:
            continue
        ax.errorbar([x], [c["mean"]], yerr=[c["std"]], fmt="o", color="C0", capsize=4, ms=6)
        ax.scatter([x] * len(c["values"]), c["values"], s=10, color="C1", alpha=0.7, zorder=3)
    if quantity:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel("training structures")
    else:
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("variant")
    ax.set_ylabel(metric)
    ax.set_title(f"{payload['study']}: {metric} on {set_id}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_name(set_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", set_id) + ".png"


def card(payload: dict) -> str:
    """The study card (README.md with Hub front matter)."""
    sets = payload["evaluation_sets"]
    lines = ["---", f"license: {payload.get('license', 'cc-by-4.0')}", f"pretty_name: HRTEM study {payload['study']}",
             "tags:", "- hrtem", "- segmentation", "- study", "configs:", "- config_name: matrix",
             f"  data_files: {MATRIX_PARQUET}", "---", "",
             f"# Study `{payload['study']}` {payload['version']}", ""]
    if payload.get("description"):
        lines += [payload["description"].strip(), ""]
    lines += ["## What varied", "", f"Axis: **{payload['axis']}**, base configuration `{payload['base']}`; "
              f"{payload['seeds']} training seeds per variant; one training spec for all "
              f"(`{json.dumps(payload['training'], sort_keys=True)}`).", ""]
    lines += ["| variant | change from the base | training set |", "|---|---|---|"]
    for v in payload["variants"]:
        if payload["axis"] == "quantity":
            change = f"first {v['max_structures']} training structures"
        elif payload["axis"] == "transfer":
            change = ("simulation only (k = 0)" if not v.get("k") else
                      f"k = {v['k']} real images, {v['mode']}")
        else:
            change = ", ".join(f"`{k}: {json.dumps(x, sort_keys=True)}`" for k, x in sorted(v.get("overrides", {}).items())) or "none (base)"
        lines.append(f"| {v['name']} | {change} | `{v['dataset']}` |")
    lines += ["", "## Results", "", table(payload), ""]
    if payload["metric"] != "detection_f1" and any("detection_f1" in c for by in payload["summary"].values()
                                                    for c in by.values()):
        lines += [table(payload, "detection_f1"), ""]
    lines += ["## Finding", "", finding(payload), ""]
    for s in sets:
        lines += [f"![{s['id']}](plots/{plot_name(s['id'])})", ""]
    lines += ["## Evaluation sets", "", "Identical for every model:", ""]
    for s in sets:
        where = s.get("source") or s.get("path") or s.get("dataset")
        extra = f", {len(s['folds'])} folds of held-back images" if s.get("folds") else ""
        lines.append(f"- `{s['id']}` ({s['kind']}{extra}): `{where}`, hash `{s['hash']}`")
    for w in payload.get("warnings", []):
        lines.append(f"- **warning:** {w}")
    r = payload.get("reuse", {})
    lines += ["", "## Reuse", "", f"Exit waves simulated: **{r.get('waves_simulated', 0)}**, reused from "
              f"other variants/studies: **{r.get('waves_reused', 0)}** (structures built "
              f"{r.get('structures_built', 0)}, reused {r.get('structures_reused', 0)}).", ""]
    lk = payload.get("leakage") or {}
    if lk:
        lines += [f"Leakage check: {'passed' if lk.get('passed') else 'FAILED'} — no structure of the "
                  f"simulated test set ({lk.get('test_structures', 0)} structures) in any training set "
                  "(species + positions hashes).", ""]
    lines += ["## Lineage", "", "| dataset | name / version | config | spec hash | structures fp | waves fp |",
              "|---|---|---|---|---|---|"]
    for key, d in sorted(payload["datasets"].items()):
        fp = d.get("fingerprints", {})
        lines.append(f"| {key} | {d['name']} {d['version']} | {d['config_name']} | `{d['spec_hash']}` | "
                     f"`{fp.get('structures', '')}` | `{fp.get('waves', '')}` |")
    lines += ["", "| model | training seed | fingerprint(s) |", "|---|---|---|"]
    for m in payload["models"]:
        fps = ", ".join(f"`{x}`" for x in m.get("fingerprints", []))
        lines.append(f"| {m['variant']}\\|{m['seed']} | {m.get('train_seed', '')} | {fps or m.get('skipped', '')} |")
    lines += ["", f"Generated by hrtem-dataset {payload.get('package_version', '')} from "
              f"`{payload.get('spec_path', '')}` (study hash `{payload.get('study_hash', '')}`).", ""]
    return "\n".join(lines)


def write_report(payload: dict, out_dir: str | Path) -> dict:
    """Write study.json, README.md and plots/*.png into ``out_dir`` (atomically, file by file).
    Returns ``{"path", "files", "pngs": {set id: bytes}}``."""
    out = Path(out_dir)
    payload = {**payload, "summary": summarize(payload["matrix"])}
    atomic_write_text(out / STUDY_JSON, json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return _render(payload, out)


def write_matrix_parquet(payload: dict, path: Path) -> Path:
    """One row per (variant, seed, evaluation set) with the scalar metrics (null where undefined)."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    rows = payload["matrix"]
    cols: dict[str, list] = {"variant": [r["variant"] for r in rows], "seed": [int(r["seed"]) for r in rows],
                             "evaluation_set": [r["set"] for r in rows]}
    for m in (*METRICS, "n_images"):
        cols[m] = [_num((r.get("metrics") or {}).get(m)) for r in rows]
    table_ = pa.table({k: pa.array(v, type=pa.string() if k in ("variant", "evaluation_set") else
                                   (pa.int64() if k == "seed" else pa.float64())) for k, v in cols.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table_, tmp)
    return path


def _render(payload: dict, out: Path) -> dict:
    pngs = {s["id"]: plot_png(payload, s["id"]) for s in payload["evaluation_sets"]}
    files = [out / STUDY_JSON, write_matrix_parquet(payload, out / MATRIX_PARQUET)]
    for sid, png in pngs.items():
        files.append(atomic_write_bytes(out / "plots" / plot_name(sid), png))
    files.append(atomic_write_text(out / "README.md", card(payload)))
    return {"path": str(out), "files": [str(f) for f in files], "pngs": pngs}


def render_report(folder: str | Path) -> dict:
    """Re-render README.md and the plots of a study folder from its study.json."""
    folder = Path(folder)
    p = folder / STUDY_JSON
    if not p.is_file() and (folder / "study" / STUDY_JSON).is_file():
        folder, p = folder / "study", folder / "study" / STUDY_JSON
    if not p.is_file():
        raise InputError(f"{folder}: no {STUDY_JSON} (run `hrtem study run SPEC --out DIR` first)")
    try:
        payload = json.loads(p.read_text())
        for k in ("study", "variants", "evaluation_sets", "matrix", "metric"):
            payload[k]  # noqa: B018 - required keys
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{p}: not a study.json ({type(exc).__name__}: {exc})") from None
    payload["summary"] = summarize(payload["matrix"])
    return _render(payload, folder)
