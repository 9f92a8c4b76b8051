"""Assemble, write and render the validation report: ``validation.json``, ``README.md`` (a card) and
``plots/*.png`` in one folder, written atomically as a whole (:func:`hrtem_dataset.io.atomic_dir`).

Two kinds:

- ``reference`` (:func:`reference_report`): the engine comparison on the two reference scenes
  (:mod:`.scenes`), convergence with sampling / slice thickness / phonons on the a-C + Au scene at 300 kV,
  2 Å slices, 0.1 Å (Lobato), Kirkland's Fig. 5.12 and the CTF zeros.
- ``configuration`` (:func:`configuration_report`): the same at a dataset configuration's own energy,
  sampling, slice thickness and parametrization, on a window of one of its own scenes, with the check that
  its exit wave is within :data:`.physics.EXIT_WAVE_TOLERANCE` of the converged run.

``quick=True`` shortens every series (samplings 0.2–0.05 Å, slices 4–1 Å, up to 8 phonon configurations,
no second reference scene): the tests' variant.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

from ase import Atoms

from .. import __version__
from ..errors import InputError
from ..io import atomic_dir
from ..simulation import engine_version, wavelength
from ..simulation.core import transmission_antialiased
from . import physics as ph
from .scenes import CONFIG_WINDOW, REFERENCE_SCENE, au_cube, configuration_scene, crop_window, reference_scene

REPORT_JSON = "validation.json"
REPORT_CARD = "README.md"
PLOTS = "plots"


def _series(quick: bool) -> dict:
    if quick:
        return {"samplings": (0.2, 0.1, 0.05), "slices": (4.0, 2.0, 1.0), "phonons": (1, 2, 4, 8)}
    return {"samplings": ph.SAMPLINGS, "slices": ph.SLICES, "phonons": ph.PHONON_COUNTS}


def engine_versions(engines) -> dict:

    return {e: engine_version(e) for e in engines}


def _checks(payload: dict, tolerance: float) -> dict:
    checks = {}
    err = payload["settings_error"]["exit_wave"]
    checks["exit_wave_converged"] = {"passed": bool(err <= tolerance), "value": err, "tolerance": tolerance,
                                     "description": "exit wave at the settings vs the converged run (relative L2)"}
    for name, comp in payload["engine_comparison"].items():
        if "ratio_prismatic_abtem" in comp:
            checks[f"prismatic_vs_abtem_{name}"] = {
                "passed": comp["within_factor"], "value": comp["ratio_prismatic_abtem"], "tolerance": ph.ENGINE_FACTOR,
                "description": "(torch vs Prismatic) / (torch vs abTEM), same atoms"}
    k = payload["kirkland_fig_5_12"]
    checks["kirkland_fig_5_12"] = {"passed": k["passed"], "value": [k["min"], k["max"]],
                                   "tolerance": "equal to 2 decimals", "description": "image min/max = 0.72/1.03"}
    c = payload["ctf_zeros"]
    checks["ctf_zeros"] = {"passed": c["passed"], "value": c["max_rel_error"], "tolerance": c["tolerance"],
                           "description": "CTF zeros vs Scherzer's formula (max relative error)"}
    return checks


def _run(kind: str, atoms: Atoms, scene: dict, settings: dict, comparisons: dict[str, Atoms], quick: bool,
         tolerance: float, progress=None) -> dict:
    series = _series(quick)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name, fn, *a, **kw):
        if progress:
            progress(name)
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        times[name] = time.perf_counter() - t0
        return out

    e, s, dz, p = settings["energy"], settings["sampling"], settings["slice_thickness"], settings["parametrization"]
    scheme = {"antialias_transmission": settings.get("antialias_transmission")}
    engines = ph.available_engines()
    with ph.shared_waves():  # the series' common runs computed once (each series' seconds: what it added)
        payload = {
            "kind": kind, "quick": bool(quick), "settings": settings, "scene": scene,
            "engines": engine_versions(engines),
            "engine_comparison": {name: timed(f"engines ({name})", ph.engine_comparison, a, e, s, dz, engines)
                                  for name, a in comparisons.items()},
            "sampling_convergence": timed("sampling convergence", ph.sampling_convergence, atoms, e, dz, p,
                                          tuple(series["samplings"]) + (s,), **scheme),
            "transmission_schemes": timed("transmission schemes", ph.transmission_schemes, atoms, e, dz, p,
                                          tuple(series["samplings"]) + (s,)),
            "slice_convergence": timed("slice convergence", ph.slice_convergence, atoms, e, s, p,
                                       tuple(series["slices"]) + (dz,), **scheme),
            "settings_error": timed("settings vs converged", ph.settings_error, atoms, e, s, dz, p,
                                    min(series["samplings"]), min(series["slices"]), **scheme),
            "phonon_convergence": timed("phonon convergence", ph.phonon_convergence, atoms, e, s, dz, p,
                                        tuple(series["phonons"]) + ((settings["phonons"],) if settings.get("phonons") else ()),
                                        **scheme),
            "kirkland_fig_5_12": timed("Kirkland Fig. 5.12", ph.kirkland_fig_5_12),
            "ctf_zeros": timed("CTF zeros", ph.ctf_zeros, 200e3, 1e7, 0.75),
            "image_condition": dict(ph.IMAGE_CONDITION),
        }
    payload["checks"] = _checks(payload, tolerance)
    payload["seconds"] = {**times, "total": time.perf_counter() - t_all}

    payload["package_version"] = __version__
    return payload


def reference_report(quick: bool = False, tolerance: float = ph.EXIT_WAVE_TOLERANCE, progress=None) -> dict:
    """The reference report: 300 kV, 0.1 Å, 2 Å slices, Lobato on the a-C + Au scene; engines on it and on
    the Au cube (Kirkland)."""
    full = reference_scene()
    atoms = crop_window(full, CONFIG_WINDOW)
    settings = {"energy": 300e3, "sampling": 0.1, "slice_thickness": 2.0, "parametrization": "lobato", "phonons": 0}
    comparisons = {"a-C + Au": full} if quick else {"a-C + Au": full, "Au cube [001]": au_cube()}
    scene = {"name": f"a-C + Au reference scene, {CONFIG_WINDOW:g} Å window around the particle (engines: whole "
                     f"40 Å scene)", "spec": REFERENCE_SCENE, "n_atoms": len(atoms),
             "cell": [float(c) for c in atoms.cell.lengths()]}
    return _run("reference", atoms, scene, settings, comparisons, quick, tolerance, progress)


def scene_report(atoms: Atoms, name: str, settings: dict | None = None, quick: bool = False,
                 tolerance: float = ph.EXIT_WAVE_TOLERANCE, progress=None) -> dict:
    """The report on given atoms (``hrtem validate SCENE``) at ``settings`` (default: 300 kV, 0.1 Å, 2 Å,
    Lobato, no phonons)."""
    settings = {"energy": 300e3, "sampling": 0.1, "slice_thickness": 2.0, "parametrization": "lobato", "phonons": 0,
                **(settings or {})}
    scene = {"name": name, "n_atoms": len(atoms), "cell": [float(c) for c in atoms.cell.lengths()]}
    return _run("scene", atoms, scene, settings, {name: atoms}, quick, tolerance, progress)


def configuration_report(spec, quick: bool = False, tolerance: float = ph.EXIT_WAVE_TOLERANCE,
                         progress=None) -> dict:
    """The report of a :class:`~hrtem_dataset.specs.DatasetSpec`: its simulation settings on a window of its
    structure 0 (:func:`.scenes.configuration_scene`)."""
    atoms = configuration_scene(spec)
    sim = spec.simulation
    settings = {"energy": float(sim.energy), "sampling": float(sim.sampling), "slice_thickness": float(sim.slice_thickness),
                "parametrization": sim.parametrization, "phonons": int(sim.phonons),
                "antialias_transmission": sim.antialias_transmission}
    scene = {"name": f"{spec.config_name}: structure 0, ≤ {CONFIG_WINDOW:g} Å window around its first particle",
             "dataset": spec.name, "version": spec.version, "config_name": spec.config_name,
             "n_atoms": len(atoms), "cell": [float(c) for c in atoms.cell.lengths()]}
    out = _run("configuration", atoms, scene, settings, {"configuration scene": atoms}, quick, tolerance, progress)
    out["config_name"] = spec.config_name
    return out


# ------------------------------------------------------------------------------------------------ output


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.2f} %"


def summary(payload: dict) -> dict:
    """The numbers a dataset card states: errors at the settings, engine agreement, phonon average."""
    st = payload["settings"]
    phon = payload["phonon_convergence"]["rows"]
    n = st.get("phonons") or 0
    at_n = next((r["image"] for r in phon if r["phonons"] == n), None) if n else None
    comp = next(iter(payload["engine_comparison"].values()))
    return {"sampling": st["sampling"], "slice_thickness": st["slice_thickness"],
            "exit_wave_error": payload["settings_error"]["exit_wave"], "image_error": payload["settings_error"]["image"],
            "converged_sampling": payload["settings_error"]["converged_sampling"],
            "converged_slice_thickness": payload["settings_error"]["converged_slice_thickness"],
            "phonons": n, "phonon_image_error": at_n, "phonon_reference": payload["phonon_convergence"]["reference_phonons"],
            "engines": comp["rel_l2"], "tolerance": payload["checks"]["exit_wave_converged"]["tolerance"],
            "passed": payload["checks"]["exit_wave_converged"]["passed"]}


def render_card(payload: dict) -> str:
    """The markdown card of a report."""
    st, sc = payload["settings"], payload["scene"]
    lines = [f"# Simulation validation ({payload['kind']}{', quick' if payload['quick'] else ''})", "",
             f"hrtem-dataset {payload['package_version']}; engines: "
             + ", ".join(f"{k} (`{v}`)" for k, v in payload["engines"].items()) + ".", "",
             f"Settings: {st['energy'] / 1e3:g} kV, sampling {st['sampling']:g} Å, slices {st['slice_thickness']:g} Å, "
             f"{st['parametrization']} parametrization, {st.get('phonons', 0)} frozen phonons, transmission functions "
             f"{'band-limited' if transmission_antialiased('torch', st.get('antialias_transmission')) else 'as they are'}. "
             f"Scene: {sc['name']} ({sc['n_atoms']} atoms, cell {' × '.join(f'{c:.1f}' for c in sc['cell'])} Å).", "",
             "Metrics: relative L2 of complex exit waves (on different grids: inside the coarser run's antialias "
             "band); images at defocus {defocus:g} Å, Cs {Cs:g} Å, {semiangle_cutoff:g} mrad aperture, error "
             "relative to the image contrast ‖I − I_ref‖ / ‖I_ref − ⟨I_ref⟩‖.".format(**payload["image_condition"]), "",
             "## Checks", "", "| check | value | tolerance | passed |", "|---|---|---|---|"]
    for name, c in payload["checks"].items():
        v = c["value"]
        v = ", ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else (f"{v:.4g}" if isinstance(v, float) else v)
        lines.append(f"| {name}: {c['description']} | {v} | {c['tolerance']} | {'yes' if c['passed'] else '**no**'} |")
    se = payload["settings_error"]
    lines += ["", "## Accuracy at these settings", "",
              f"Exit wave vs the converged run ({se['converged_sampling']:g} Å, {se['converged_slice_thickness']:g} Å "
              f"slices): **{_pct(se['exit_wave'])}**; image: **{_pct(se['image'])}** of the contrast.", ""]
    lines += ["## Engines (Kirkland, static lattice, same atoms)", "", "| scene | atoms | grid | pair | relative L2 |",
              "|---|---|---|---|---|"]
    for name, comp in payload["engine_comparison"].items():
        for pair, v in comp["rel_l2"].items():
            lines.append(f"| {name} | {comp['n_atoms']} | {'×'.join(map(str, comp['gpts']))} | "
                         f"{pair.replace('_vs_', ' vs ')} | {_pct(v)} |")
    if len(payload["engines"]) < 3:
        lines += ["", "Engines not installed here are left out (abTEM: the `abtem` extra; Prismatic: "
                      "`make prismatic`)."]
    sc_ = payload["sampling_convergence"]
    lines += ["", f"## Convergence with sampling ({sc_['slice_thickness']:g} Å slices, reference "
                  f"{sc_['reference_sampling']:g} Å)", "", "| sampling (Å) | grid | exit wave | image |", "|---|---|---|---|"]
    lines += [f"| {r['sampling']:g} | {'×'.join(map(str, r['gpts']))} | {_pct(r['exit_wave'])} | {_pct(r['image'])} |"
              for r in sc_["rows"]]
    ts = payload.get("transmission_schemes")
    if ts:
        lines += ["", f"## Transmission schemes ({ts['slice_thickness']:g} Å slices, each against its own "
                      f"{ts['reference_sampling']:g} Å run; those two differ by {_pct(ts['reference_difference'])})", "",
                  "The torch engine uses each slice's transmission function exp(iσv) as it is (Prismatic's scheme, the "
                  "default) or band-limits it to the antialias aperture first (abTEM's: one FFT pair more per slice).",
                  "", "| sampling (Å) | scheme | exit wave | image |", "|---|---|---|---|"]
        lines += [f"| {r['sampling']:g} | {r['scheme'].replace('_', ' ')} | {_pct(r['exit_wave'])} | {_pct(r['image'])} |"
                  for r in ts["rows"]]
    sl = payload["slice_convergence"]
    lines += ["", f"## Convergence with slice thickness ({sl['sampling']:g} Å, reference "
                  f"{sl['reference_slice_thickness']:g} Å)", "", "| slice (Å) | exit wave | image |", "|---|---|---|"]
    lines += [f"| {r['slice_thickness']:g} | {_pct(r['exit_wave'])} | {_pct(r['image'])} |" for r in sl["rows"]]
    pc = payload["phonon_convergence"]
    lines += ["", f"## Frozen-phonon average (image of the mean over N vs over {pc['reference_phonons']})", "",
              "| N | image | expected sqrt(σ²(1/N − 1/M)) |", "|---|---|---|"]
    lines += [f"| {r['phonons']} | {_pct(r['image'])} | {_pct(r['expected'])} |" for r in pc["rows"]]
    k = payload["kirkland_fig_5_12"]
    c = payload["ctf_zeros"]
    lines += ["", "## Textbook values", "",
              f"Kirkland (2010) Fig. 5.12 (C, Si, Cu, Au, U at 200 kV, Cs 1.3 mm, 700 Å, 10.37 mrad): image min "
              f"{k['min']:.4f}, max {k['max']:.4f} (published {k['expected']['min']}, {k['expected']['max']}).", "",
              f"CTF at Scherzer defocus ({c['energy'] / 1e3:g} kV, Cs {c['Cs'] / 1e7:g} mm, {c['defocus']:.1f} Å): "
              f"{len(c['numeric'])} zeros of sin χ up to {c['k_max']:g} 1/Å, max relative deviation from the analytic "
              f"zeros {c['max_rel_error']:.2e}; first zero at {c['first_zero_resolution']:.4f} Å "
              f"(point resolution (λ³Cs/6)^¼ = {c['point_resolution']:.4f} Å).", "",
              "## Plots", "", "![engines and convergence](plots/convergence.png)", "",
              "![phonons](plots/phonons.png)", "", "![CTF](plots/ctf.png)", "",
              f"Run time: {payload['seconds']['total']:.0f} s (" + ", ".join(
                  f"{k_}: {v:.0f} s" for k_, v in payload["seconds"].items() if k_ != "total") + ").", ""]
    return "\n".join(lines)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plots(payload: dict) -> dict[str, bytes]:
    """``convergence.png`` (sampling, slices, engines), ``phonons.png``, ``ctf.png`` as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    out = {}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=90)
    rows = [r for r in payload["sampling_convergence"]["rows"] if r["exit_wave"] > 0]
    ax = axes[0]
    ax.loglog([r["sampling"] for r in rows], [r["exit_wave"] for r in rows], "o-", label="exit wave")
    ax.loglog([r["sampling"] for r in rows], [max(r["image"], 1e-9) for r in rows], "s-", label="image")
    ax.axhline(payload["checks"]["exit_wave_converged"]["tolerance"], color="gray", ls=":", label="tolerance")
    ax.set_xlabel("sampling (Å)")
    ax.set_ylabel("relative L2 vs finest")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    rows = [r for r in payload["slice_convergence"]["rows"] if r["exit_wave"] > 0]
    ax = axes[1]
    ax.loglog([r["slice_thickness"] for r in rows], [r["exit_wave"] for r in rows], "o-", label="exit wave")
    ax.loglog([r["slice_thickness"] for r in rows], [max(r["image"], 1e-9) for r in rows], "s-", label="image")
    ax.set_xlabel("slice thickness (Å)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax = axes[2]
    labels, values = [], []
    for name, comp in payload["engine_comparison"].items():
        for pair, v in comp["rel_l2"].items():
            labels.append(f"{name}\n{pair.replace('_vs_', '–')}")
            values.append(100 * v)
    ax.barh(range(len(values)), values, color="C2")
    ax.set_yticks(range(len(values)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.set_xlabel("relative L2 (%)")
    ax.set_title("engines, same atoms", fontsize=9)
    out["convergence.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.5, 3.4), dpi=90)
    rows = [r for r in payload["phonon_convergence"]["rows"] if r["image"] > 0]
    ax.loglog([r["phonons"] for r in rows], [r["image"] for r in rows], "o-", label="measured")
    ax.loglog([r["phonons"] for r in rows], [max(r["expected"], 1e-9) for r in rows], "--", label="expected sqrt(σ²(1/N − 1/M))")
    ax.set_xlabel("frozen-phonon configurations N")
    ax.set_ylabel("image error vs mean of M")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    out["phonons.png"] = _png(fig)

    c = payload["ctf_zeros"]

    lam = wavelength(c["energy"])
    k = np.linspace(0, c["k_max"], 2000)
    chi = -np.pi * lam * k**2 * c["defocus"] + 0.5 * np.pi * c["Cs"] * lam**3 * k**4
    fig, ax = plt.subplots(figsize=(6, 3), dpi=90)
    ax.plot(k, np.sin(chi), lw=0.8, label="sin χ (Scherzer)")
    ax.plot(c["numeric"], np.zeros(len(c["numeric"])), "o", ms=3, label="zeros, imaging module")
    ax.plot(c["analytic"], np.zeros(len(c["analytic"])), "x", ms=4, label="zeros, analytic")
    ax.set_xlabel("k (1/Å)")
    ax.legend(fontsize=7)
    out["ctf.png"] = _png(fig)
    return out


def write_report(payload: dict, out: str | Path) -> Path:
    """Write ``out/validation.json``, ``out/README.md`` and ``out/plots/*.png`` (the folder as a whole,
    atomically). Returns the folder."""

    out = Path(out)
    pngs = plots(payload)
    card = render_card(payload)
    with atomic_dir(out) as tmp:
        (tmp / REPORT_JSON).write_text(json.dumps(payload, indent=1, sort_keys=True, default=float))
        (tmp / REPORT_CARD).write_text(card)
        (tmp / PLOTS).mkdir()
        for name, data in pngs.items():
            (tmp / PLOTS / name).write_bytes(data)
    return out


def read_report(folder: str | Path) -> dict:
    """The payload of a report folder (:class:`InputError` when missing or malformed)."""
    path = Path(folder) / REPORT_JSON
    if not path.is_file():
        raise InputError(f"{path}: no validation report")
    try:
        payload = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path}: malformed JSON") from None
    if not isinstance(payload, dict) or "settings_error" not in payload or "checks" not in payload:
        raise InputError(f"{path}: not a validation report")
    return payload


# ------------------------------------------------------------------------------------------------ datasets


def dataset_report_dir(dataset_folder: str | Path, config_name: str) -> Path:
    """Where a dataset folder holds a configuration's report: ``validation/<config>/``."""
    return Path(dataset_folder) / "validation" / config_name


def card_section(dataset_folder: str | Path, config_name: str) -> list[str]:
    """Markdown lines for a dataset card: the accuracy of the configuration's simulation at its own settings
    and a link to the report, when ``validation/<config>/validation.json`` is in the folder (else [])."""
    folder = dataset_report_dir(dataset_folder, config_name)
    try:
        payload = read_report(folder)
    except InputError:
        return []
    s = summary(payload)
    rel = f"validation/{config_name}"
    order = ["torch_vs_abtem", "torch_vs_prismatic", "abtem_vs_prismatic"]
    pairs = sorted(s["engines"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    engines = ", ".join(f"{k.replace('_vs_', ' vs ')} {_pct(v)}" for k, v in pairs) or "torch only"
    what = ("the image of its single frozen-phonon configuration differs" if s["phonons"] == 1 else
            f"the image averaged over its {s['phonons']} frozen-phonon configurations differs")
    phon = (f" Frozen phonons: {what} by {_pct(s['phonon_image_error'])} of the contrast from a "
            f"{s['phonon_reference']}-configuration average."
            if s["phonons"] and s["phonon_image_error"] is not None else "")
    verdict = "within" if s["passed"] else "**outside**"
    return [f"Simulation accuracy of `{config_name}` ([report]({rel}/README.md), [numbers]({rel}/validation.json)): "
            f"at its sampling {s['sampling']:g} Å and {s['slice_thickness']:g} Å slices, the exit waves differ by "
            f"{_pct(s['exit_wave_error'])} (relative L2) from the converged run ({s['converged_sampling']:g} Å, "
            f"{s['converged_slice_thickness']:g} Å slices) and the images by {_pct(s['image_error'])} of their "
            f"contrast, {verdict} the {_pct(s['tolerance'])} tolerance; engines on the same atoms: {engines}.{phon}",
            ""]
