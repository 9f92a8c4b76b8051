"""Segmentation metrics: pixel IoU/F1/precision/recall and per-particle detection.

Pixel metrics are computed for the particle class (1) from confusion counts accumulated over all images
of a split (micro-average), so large and small images weigh by their pixel count. When neither the
prediction nor the truth contains a particle pixel, the scores are 1 (nothing to find, nothing found).

Particle detection (as in the paper's per-particle analysis): connected components of the predicted and
true masks (8-connectivity, ``scipy.ndimage.label``) are matched one-to-one when their IoU exceeds 0.5
(with IoU > 0.5 a component can overlap at most one partner that well, so the matching is unique).
Size error of a matched pair: relative area error |A_pred − A_true| / A_true and the equivalent-diameter
error d_pred − d_true (Å when a pixel size is given, else pixels), d = 2 sqrt(A / π).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

_STRUCTURE = np.ones((3, 3), dtype=bool)  # 8-connectivity


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 1.0


def confusion(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts of the particle class for boolean/0-1 masks of equal shape."""
    p = np.asarray(pred).astype(bool)
    t = np.asarray(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return tp, fp, fn, int(p.size - tp - fp - fn)


def scores_from_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    """IoU, F1 (= Dice), precision and recall from pixel counts."""
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def pixel_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    tp, fp, fn, _ = confusion(pred, target)
    return scores_from_counts(tp, fp, fn)


def label_particles(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-connectivity): (labels int32, n)."""
    labels, n = ndimage.label(np.asarray(mask).astype(bool), structure=_STRUCTURE)
    return labels.astype(np.int32), int(n)


def match_particles(pred_labels: np.ndarray, n_pred: int, true_labels: np.ndarray, n_true: int,
                    iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """Pairs (pred_id, true_id, iou) with IoU > ``iou_threshold`` (ids from 1), vectorised.

    The overlap matrix comes from one ``bincount`` over joint labels; areas from the label histograms.
    """
    if n_pred == 0 or n_true == 0:
        return []
    joint = pred_labels.astype(np.int64) * (n_true + 1) + true_labels.astype(np.int64)
    inter = np.bincount(joint.ravel(), minlength=(n_pred + 1) * (n_true + 1)).reshape(n_pred + 1, n_true + 1)
    area_p = inter.sum(axis=1)
    area_t = inter.sum(axis=0)
    inter = inter[1:, 1:]
    union = area_p[1:, None] + area_t[None, 1:] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    if iou_threshold < 0.5:  # matches may not be unique below 0.5: solve the assignment
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > iou_threshold
        rows, cols = rows[keep], cols[keep]
    else:
        rows, cols = np.nonzero(iou > iou_threshold)
    return [(int(r) + 1, int(c) + 1, float(iou[r, c])) for r, c in zip(rows, cols, strict=True)]


def particle_table(mask: np.ndarray, pixel_size: float | None = None) -> list[dict]:
    """Per-particle statistics of a binary mask (rows = first array axis).

    Columns: ``particle`` (1..n), ``area_px``, ``area_A2`` (Å²), ``equivalent_diameter_A``
    (2 sqrt(A/π), Å), ``centroid_row``/``centroid_col`` (pixels), ``centroid_x_A``/``centroid_y_A``
    (Å; x along columns, y along rows), ``touches_border``. The Å columns are NaN without a pixel size.
    """
    labels, n = label_particles(mask)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    com = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, idx), dtype=np.float64).reshape(n, 2)
    border = np.zeros(n + 1, dtype=bool)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border[np.unique(edge)] = True
    px = float(pixel_size) if pixel_size else math.nan
    rows = []
    for i in range(n):
        a_px = float(area[i])
        a = a_px * px * px
        rows.append({
            "particle": int(idx[i]),
            "area_px": int(a_px),
            "area_A2": a,
            "equivalent_diameter_A": 2.0 * math.sqrt(a / math.pi) if not math.isnan(a) else math.nan,
            "centroid_row": float(com[i, 0]),
            "centroid_col": float(com[i, 1]),
            "centroid_x_A": float(com[i, 1]) * px,
            "centroid_y_A": float(com[i, 0]) * px,
            "touches_border": bool(border[idx[i]]),
        })
    return rows


@dataclass
class SegmentationMetrics:
    """Accumulates pixel counts and particle matches over images; :meth:`compute` gives the summary."""

    iou_threshold: float = 0.5
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    n_images: int = 0
    n_true: int = 0
    n_pred: int = 0
    n_matched: int = 0
    matched_iou: list[float] = field(default_factory=list)
    area_rel_error: list[float] = field(default_factory=list)
    diameter_error: list[float] = field(default_factory=list)
    diameter_in_angstrom: bool = True
    image_f1: list[float] = field(default_factory=list)

    def update(self, pred: np.ndarray, target: np.ndarray, pixel_size: float | None = None,
               detection: bool = True) -> None:
        tp, fp, fn, tn = confusion(pred, target)
        self.image_f1.append(scores_from_counts(tp, fp, fn)["f1"])
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += tn
        self.n_images += 1
        if not detection:
            return
        pl, npred = label_particles(pred)
        tl, ntrue = label_particles(target)
        self.n_pred += npred
        self.n_true += ntrue
        pairs = match_particles(pl, npred, tl, ntrue, self.iou_threshold)
        self.n_matched += len(pairs)
        if not pairs:
            return
        ap = np.bincount(pl.ravel(), minlength=npred + 1).astype(np.float64)
        at = np.bincount(tl.ravel(), minlength=ntrue + 1).astype(np.float64)
        p_ids = np.array([p for p, _, _ in pairs])
        t_ids = np.array([t for _, t, _ in pairs])
        scale = float(pixel_size) if pixel_size else 1.0
        if not pixel_size:
            self.diameter_in_angstrom = False
        self.matched_iou += [iou for _, _, iou in pairs]
        self.area_rel_error += list(np.abs(ap[p_ids] - at[t_ids]) / at[t_ids])
        d = lambda a: 2.0 * np.sqrt(a / np.pi) * scale  # noqa: E731
        self.diameter_error += list(d(ap[p_ids]) - d(at[t_ids]))

    def compute(self) -> dict[str, float | int]:
        out: dict[str, float | int] = scores_from_counts(self.tp, self.fp, self.fn)
        out["n_images"] = self.n_images
        f1s = [f for f in self.image_f1 if math.isfinite(f)]  # an image with no particle and none found: NaN
        out["f1_image_mean"] = float(np.mean(f1s)) if f1s else float("nan")
        out["n_true_particles"] = self.n_true
        out["n_pred_particles"] = self.n_pred
        out["n_matched_particles"] = self.n_matched
        out["detection_precision"] = _ratio(self.n_matched, self.n_pred)
        out["detection_recall"] = _ratio(self.n_matched, self.n_true)
        out["detection_f1"] = _ratio(2 * self.n_matched, self.n_pred + self.n_true)
        nan = float("nan")
        out["matched_iou_mean"] = float(np.mean(self.matched_iou)) if self.matched_iou else nan
        out["area_rel_error_mean"] = float(np.mean(self.area_rel_error)) if self.area_rel_error else nan
        unit = "A" if self.diameter_in_angstrom else "px"
        de = np.asarray(self.diameter_error)
        out[f"diameter_error_mean_{unit}"] = float(de.mean()) if de.size else nan
        out[f"diameter_error_abs_mean_{unit}"] = float(np.abs(de).mean()) if de.size else nan
        return out
