"""Dataset card (``README.md``) of a dataset folder, regenerated from every configuration it holds.

The card's YAML front matter declares ``configs:`` (one per configuration, ``data_files`` per split) and
``dataset_info`` (features and split sizes), plus license, task category, size category and tags; the
body gives the configurations, a preview figure per configuration, how to load, the columns, the
generation protocol with every parameter (ranges, choices, series) of each spec, how lineage and
versions work, and the citation. Inputs are the files the writer leaves in the folder:
``specs/<config>.yaml`` (the spec) and ``specs/<config>.json`` (row counts, shapes, features).
The card never contains a timestamp or a token, so it is byte-identical for identical inputs.

Size: over 400 lines because the card is one document (YAML header, protocol table, column docs, preview
figure, load snippets); splitting its sections across modules would scatter one template.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import atomic_dir, atomic_write_text, make_public
from ..previews import contrast_stretch
from ..specs import Choice, DatasetSpec, IntRange, SeriesSpec, Uniform, load_spec
from ..validation.report import card_section, dataset_report_dir, read_report
from .features import SPLITS, column_docs

TAGS = ["hrtem", "electron-microscopy", "tem", "nanoparticles", "segmentation", "synthetic", "simulation",
        "multislice", "materials-science"]

CITATION = """@article{rangeldacosta2024robust,
  title   = {A robust synthetic data generation framework for machine learning in
             high-resolution transmission electron microscopy (HRTEM)},
  author  = {Rangel DaCosta, Luis and Sytwu, Katherine and Groschner, Catherine and Scott, Mary},
  journal = {npj Computational Materials},
  volume  = {10},
  year    = {2024},
  doi     = {10.1038/s41524-024-01336-0},
  eprint  = {2309.06122},
  archivePrefix = {arXiv}
}"""

_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(n_rows: int) -> str:
    """Hugging Face ``size_categories`` tag for ``n_rows`` rows."""
    for bound, name in _SIZE_CATEGORIES:
        if n_rows < bound:
            return name
    return "n>1B"


def hub_tag(version: str) -> str:
    """Hub tag of a dataset version (``0.1.0`` -> ``v0.1.0``)."""
    return version if version.startswith("v") else f"v{version}"


# --------------------------------------------------------------------------------------------------
# Generation protocol: every parameter of the spec
# --------------------------------------------------------------------------------------------------


def _fmt_num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    return f"{x:g}"


def format_param(value: Any) -> str:
    """Human-readable value of a spec parameter (fixed value, range, choice, series)."""
    if isinstance(value, Uniform):
        kind = "log-uniform" if value.log else "uniform"
        return f"{kind} {_fmt_num(value.min)} … {_fmt_num(value.max)}"
    if isinstance(value, IntRange):
        return (f"integer {value.min} … {value.max}" if value.max != value.min else str(value.min))
    if isinstance(value, Choice):
        vals = ", ".join(_fmt_num(v) for v in value.values)
        if value.weights:
            return f"one of {vals} (weights {', '.join(_fmt_num(w) for w in value.weights)})"
        return f"one of {vals}" if len(value.values) > 1 else vals
    if isinstance(value, SeriesSpec):
        return f"series over {value.param}: {', '.join(_fmt_num(v) for v in value.values)}"
    if value is None:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_param(v)}" for k, v in value.items()) if value else "—"
    if isinstance(value, list | tuple):
        return ", ".join(format_param(v) for v in value)
    return _fmt_num(value)


# Fallback descriptions (units) for spec fields without a pydantic description, by field name.
_FIELD_NOTES = {
    "substrate_thickness": "amorphous carbon thickness, Å",
    "substrate_density": "amorphous carbon density, g/cm³",
    "n_particles": "particles per structure",
    "materials": "particle material (element symbol or CIF)",
    "shapes": "particle shape",
    "radius": "particle radius, Å",
    "twins": "twin planes per particle",
    "stacking_faults": "intrinsic stacking faults per particle",
    "orientation": "zone axis or random orientation",
    "tilt_mrad": "tilt away from the zone axis, mrad",
    "vacuum": "vacuum padding above and below, Å",
    "engine": "multislice engine",
    "parametrization": "projected-potential parametrisation",
    "device": "compute device",
    "defocus": "Å from the calibrated zero defocus; defocus = −C10, positive = underfocus",
    "images_per_structure": "images drawn per structure (× series length)",
    "series": "one imaging parameter stepped through values for every structure",
    "calibrate_zero_defocus": "defocus measured from the particles' minimum-contrast defocus",
    "instances": "write instance maps",
}


def protocol_rows(model, prefix: str = "") -> list[tuple[str, str, str]]:
    """(parameter, value or range, description) for every field of a spec section, recursively."""
    from pydantic import BaseModel

    leaf_types = (Uniform, IntRange, Choice, SeriesSpec)
    rows = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        desc = (info.description or _FIELD_NOTES.get(name, "")).replace("|", "/")
        if isinstance(value, BaseModel) and not isinstance(value, leaf_types):
            rows.extend(protocol_rows(value, f"{key}."))
        else:
            rows.append((key, format_param(value).replace("|", "/"), desc))
    return rows


def _protocol_section(spec: DatasetSpec) -> str:
    lines = [f"### `{spec.config_name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [f"Kind `{spec.kind}`, root seed {spec.seed}, spec hash `{spec.hash()}`, "
              f"{spec.n_structures} structures ({spec.splits.train} train / {spec.splits.validation} validation / "
              f"{spec.splits.test} test), {spec.shard_size} structures per shard.", ""]
    lines += ["| parameter | value or range | description |", "|---|---|---|"]
    for section in ("structures", "simulation", "imaging", "labels"):
        for key, val, desc in protocol_rows(getattr(spec, section), f"{section}."):
            lines.append(f"| `{key}` | {val} | {desc} |")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Preview figure
# --------------------------------------------------------------------------------------------------


def render_preview(rows: list[dict], spec: DatasetSpec, path: str | Path) -> None:
    """PNG figure of a few samples: image (or exit-wave phase) with the mask outline, and instances.

    Arrays are indexed [x, y]; they are drawn with x horizontal (``imshow`` of the transpose,
    ``origin="lower"``), as abTEM shows them.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap


    n = max(1, len(rows))
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    palette = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    cmap = ListedColormap(np.vstack([[0, 0, 0, 1], palette]))
    title = "exit-wave phase" if spec.kind == "exit_waves" else "image"
    for j in range(n):
        top, bottom = axes[0, j], axes[1, j]
        for ax in (top, bottom):
            ax.set_axis_off()
        if j >= len(rows):
            continue
        r = rows[j]
        img, mask, inst = r["image"], r["mask"], r["instances"]
        top.imshow(contrast_stretch(img).T, cmap="gray", origin="lower", interpolation="nearest")
        if mask.shape == img.shape and mask.any():
            top.contour(mask.T, levels=[0.5], colors="tab:red", linewidths=0.8, origin="lower")
        top.set_title(f"{title}\n{r['sample_id']}", fontsize=7)
        lab = np.where(inst > 0, (inst - 1) % 20 + 1, 0)
        bottom.imshow(lab.T, cmap=cmap, vmin=0, vmax=20, origin="lower", interpolation="nearest")
        bottom.set_title(f"instances ({int(inst.max())})", fontsize=7)
    fig.suptitle(f"{spec.name} {spec.version} · {spec.config_name}", fontsize=9)
    fig.tight_layout()
    with open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Card
# --------------------------------------------------------------------------------------------------


def read_configs(folder: str | Path) -> list[tuple[DatasetSpec, dict]]:
    """(spec, summary) of every configuration written into ``folder``, sorted by configuration name."""
    folder = Path(folder)
    out = []
    for yml in sorted((folder / "specs").glob("*.yaml")):
        summary_path = yml.with_suffix(".json")
        if not summary_path.is_file() or not (folder / "data" / yml.stem).is_dir():
            continue
        spec = load_spec(yml, DatasetSpec)
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            raise InputError(f"{summary_path}: malformed JSON") from None
        if not (isinstance(summary, dict) and isinstance(summary.get("features"), dict)
                and isinstance(summary.get("splits"), dict)
                and all(isinstance(v, dict) and isinstance(v.get("num_examples"), int)
                        for v in summary["splits"].values())):
            raise InputError(f"{summary_path}: not a configuration summary (needs 'features' and 'splits' "
                             "with num_examples)")
        out.append((spec, summary))
    return out


def card_metadata(configs: list[tuple[DatasetSpec, dict]]):
    """``huggingface_hub.DatasetCardData`` with configs, dataset_info and the discovery metadata."""
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    first = configs[0][0]
    total = sum(s["num_examples"] for _, summ in configs for s in summ["splits"].values())
    yaml_configs, infos = [], {}
    for spec, summ in configs:
        splits = [s for s in SPLITS if s in summ["splits"]]
        entry = {"config_name": spec.config_name,
                 "data_files": [{"split": s, "path": f"data/{spec.config_name}/{s}-*.parquet"} for s in splits]}
        if len(configs) > 1 and spec.config_name == _default_config(configs):
            entry["default"] = True
        yaml_configs.append(entry)
        split_dict = SplitDict(dataset_name=spec.name)
        for s in splits:
            split_dict.add(SplitInfo(name=s, num_bytes=summ["splits"][s]["num_bytes"],
                                     num_examples=summ["splits"][s]["num_examples"], dataset_name=spec.name))
        infos[spec.config_name] = DatasetInfo(features=Features.from_dict(summ["features"]), splits=split_dict,
                                              dataset_name=spec.name, config_name=spec.config_name)
    data = DatasetCardData(
        license=first.license,
        pretty_name=f"HRTEM {first.name}",
        task_categories=["image-segmentation"],
        size_categories=[size_category(total)],
        tags=TAGS,
        configs=yaml_configs,
    )
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data


def _default_config(configs) -> str:
    names = [spec.config_name for spec, _ in configs]
    for preferred in ("default", "au-baseline"):
        if preferred in names:
            return preferred
    return names[0]


def render_card(configs: list[tuple[DatasetSpec, dict]], folder: str | Path | None = None) -> str:
    """Full ``README.md`` text of a dataset folder holding ``configs`` (``folder``: where to look for the
    simulation validation reports ``validation/<config>/``, linked from the card when present)."""
    if not configs:
        raise InputError("dataset card: the folder holds no written configuration (specs/<config>.yaml)")
    names = {(s.name, s.version) for s, _ in configs}
    if len(names) > 1:
        raise InputError(f"dataset card: configurations of several datasets/versions in one folder: {sorted(names)}")
    first = configs[0][0]
    tag = hub_tag(first.version)
    default = _default_config(configs)
    meta = card_metadata(configs)
    body: list[str] = [
        f"# HRTEM {first.name} (version {first.version})",
        "",
        "Simulated high-resolution transmission electron microscopy (HRTEM) images of nanoparticles on "
        "amorphous carbon, with pixel-exact segmentation labels and the full set of parameters that made each "
        "image. Generated end to end by the `hrtem-dataset` package (structures → multislice exit waves → "
        "imaging → labels) following the protocol of Rangel DaCosta et al., npj Comput. Mater. 10 (2024).",
        "",
        "## Configurations",
        "",
        "| configuration | kind | rows (train / validation / test) | structures | array shapes | pixel size (Å) |",
        "|---|---|---|---|---|---|",
    ]
    for spec, summ in configs:
        sp = summ["splits"]
        rows = " / ".join(str(sp.get(s, {}).get("num_examples", 0)) for s in SPLITS)
        structs = sum(v["num_structures"] for v in sp.values())
        shapes = ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in summ["shapes"].items())
        body.append(f"| `{spec.config_name}` | {spec.kind} | {rows} | {structs} | {shapes} | "
                    f"{spec.imaging.pixel_size:g} |")
    body.append("")
    for spec, _ in configs:
        body += [f"![preview of {spec.config_name}](assets/preview-{spec.config_name}.png)", ""]
    body += [
        "## How to load",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("<org>/{first.name}", "{default}")                  # or a local folder path',
        f'ds = load_dataset("<org>/{first.name}", "{default}", revision="{tag}")  # this exact version',
        'row = ds["train"].with_format("numpy")[0]          # arrays as numpy (images bit-exact float32)',
    ]
    if any(s.kind == "images" for s, _ in configs):
        body += [
            'image = row["image"]          # raw image, float32, indexed [x, y]',
            'mask = row["mask"]            # uint8, 0 = background, 1 = particle, same grid as image',
            'instances = row["instances"]  # 0 = background, k = particle k',
        ]
    if any(s.kind == "exit_waves" for s, _ in configs):
        body += [
            "# exit_waves configurations: complex waves per frozen-phonon configuration, image them on the fly",
            'waves = row["waves_real"] + 1j * row["waves_imag"]  # complex64 (P, nx, ny) at row["sampling"]',
            "from hrtem_dataset.imaging import image_intensity",
            'img = image_intensity(waves, sampling=row["sampling"][0], energy=row["energy"],',
            '                      defocus=row["zero_defocus"] + 50.0)  # 50 Å underfocus from minimum contrast',
        ]
    body += [
        "```",
        "",
        "Images and labels share one grid; `mask` and `preview` are PNG images whose rows are the x axis, so "
        "`np.asarray(row[\"mask\"])` lines up index for index with `row[\"image\"]`. In the default (python) "
        "format a noise-free image's `dose` is `None`; the numpy format gives NaN. JSON columns (`structure`, "
        "`particles`, `conditions`, `aberrations`) decode with `json.loads`.",
        "",
        "## Columns",
        "",
    ]
    for kind in ("images", "exit_waves"):
        if any(s.kind == kind for s, _ in configs):
            body += [f"Configurations of kind `{kind}`:", "", "| column | description |", "|---|---|"]
            body += [f"| `{c}` | {d} |" for c, d in column_docs(kind).items()]
            body.append("")
    body += [
        "## Generation protocol",
        "",
        "For each structure (index i, seed derived from the root seed and i): a scene of crystalline "
        "nanoparticles (shape, size, twins, stacking faults, orientation drawn from the ranges below) on an "
        "amorphous carbon substrate is built; its exit waves are computed by multislice with frozen phonons at "
        "the given energy and sampling; the particles alone in vacuum give the labels (exit-wave phase > "
        "threshold, Gaussian blur, threshold) and the calibrated zero defocus (minimum contrast). Each image "
        "then draws concrete imaging conditions (defocus relative to zero defocus with defocus = −C10, positive "
        "= underfocus; Cs; extra aberrations; partial coherence; detector MTF; Poisson dose noise) and is "
        "resampled to the pixel size. Units: Å, eV, mrad, e/Å².",
        "",
    ]
    for spec, _ in configs:
        body.append(_protocol_section(spec))
    if folder is not None:
        accuracy = [line for spec, _ in configs for line in card_section(folder, spec.config_name)]
        if accuracy:
            body += ["## Simulation accuracy", "", *accuracy]
    body += [
        "## Lineage",
        "",
        "Every row carries the concrete parameters that made it: `structure_id` and the full structure record "
        "(`structure`, `particles`, `materials`, `n_particles`), every imaging parameter (`defocus`, "
        "`zero_defocus`, `Cs`, `dose`, `focal_spread`, `angular_spread`, `aberrations`, `conditions`), "
        "`pixel_size`, the simulation `energy`/`sampling`/`phonons`, the multislice `engine` and "
        "`engine_version`, the `package_version`, the `spec_hash` of the configuration and the sample `seed`. "
        "Seeds are derived from the spec's root seed and the sample index, never from time, so any row can be "
        "rebuilt alone, and the same spec gives byte-identical parquet files. The spec of each configuration "
        "ships in `specs/<config>.yaml`; `hrtem materialize specs/<config>.yaml` rebuilds it.",
        "",
        "Splits are by structure: all images of one structure are in the same split, so no structure is seen "
        "in training and evaluation (checked when the data are written, and by `hrtem dataset check`).",
        "",
        "## Versions",
        "",
        f"This folder is version `{first.version}` of `{first.name}` (the semantic version in the spec). "
        f"Locally, versions sit side by side as `<root>/{first.name}/<version>/`; on the Hub each version is "
        f"a tag (`{tag}` for this one) and `load_dataset(repo, config, revision=\"{tag}\")` loads exactly it.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(body)


def write_dataset_card(out_dir: str | Path, specs: list[DatasetSpec] | None = None) -> Path:
    """(Re)write ``out_dir/README.md`` for every configuration in the folder; returns its path.

    ``specs`` (optional) restricts the card to these configurations, which must have been written.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: no such dataset folder")
    configs = read_configs(out_dir)
    if not configs:
        raise InputError(f"{out_dir}: the folder holds no written configuration (specs/<config>.yaml)")
    if specs is not None:
        wanted = {s.config_name for s in specs}
        missing = wanted - {s.config_name for s, _ in configs}
        if missing:
            raise InputError(f"{out_dir}: configuration {sorted(missing)[0]!r} has not been written")
        configs = [(s, summ) for s, summ in configs if s.config_name in wanted]
    path = atomic_write_text(out_dir / "README.md", render_card(configs, out_dir))
    make_public(path)  # atomic writes create owner-only temporaries
    return path


def attach_validation_report(report: str | Path, dataset_folder: str | Path, config_name: str) -> bool:
    """Copy a report folder into a dataset folder that holds ``config_name`` (``validation/<config>/``) and
    rewrite its card, which then links the report and states its numbers. False when the dataset folder
    does not hold that configuration (nothing is written)."""
    report, dataset_folder = Path(report), Path(dataset_folder)
    read_report(report)
    if not (dataset_folder / "specs" / f"{config_name}.yaml").is_file():
        return False
    with atomic_dir(dataset_report_dir(dataset_folder, config_name)) as tmp:
        shutil.copytree(report, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "*.tmp"))
    write_dataset_card(dataset_folder)
    return True
