"""Pure data shaping for the charts and tables (no Streamlit calls): engine results and
files turned into the arrays, rows and dicts the pages draw."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np


def step_magnitudes(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per step k -> k+1: drift |mu_k dt| and diffusion s sqrt(sum sigma^2_k dt), each (paths, steps).

    These are the sizes of the two terms of one Euler-Maruyama step, dx = mu dt + s sigma dW
    (E|s sigma dW|^2 = s^2 sum sigma^2 dt)."""
    dt, s = result["dt"], result["scale"]
    drift = result["drift_norm"][:, :-1] * dt
    diff = s * np.sqrt(result["sigma2"][:, :-1] * dt)
    return drift, diff


def history_rows(history: dict) -> list[dict]:
    """Flat rows (epoch, split, loss, value) of a checkpoint's training history."""
    rows = []
    for e in history.get("epochs", []):
        for split in ("train", "validation"):
            for name, value in (e.get(split) or {}).items():
                if value is not None:
                    rows.append({"epoch": e["epoch"], "split": split, "loss": name, "value": float(value)})
    return rows


def csv_text(rows: list[dict]) -> str:
    """Rows (dicts with the same keys) as CSV text with a header; None and NaN are written empty,
    fields with commas or quotes quoted (the standard library's ``csv``: no pandas to load)."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                         for k, v in row.items()})
    return out.getvalue()


# ----------------------------------------------------------------------------- maps
def projection(maps: dict, use_pca: bool) -> dict:
    """The map to draw on, from :func:`dashboard.compute.maps`: the stored one unless PCA is
    asked for or there is none."""
    return maps["pca"] if use_pca or maps["stored"] is None else maps["stored"]


def project(proj: dict, points: np.ndarray) -> np.ndarray:
    """Map coordinates of points (n, dim) -> (n, 2); NaN rows (stopped paths) stay NaN."""
    pts = np.asarray(points, dtype=np.float64)
    ok = np.isfinite(pts).all(-1)
    out = np.full((len(pts), 2), np.nan)
    if ok.any():
        out[ok] = np.asarray(proj["map"].transform(pts[ok].astype(np.float32)), dtype=np.float64)
    return out


# ----------------------------------------------------------------------------- evaluation files
def evaluation_files(folder: str | Path) -> dict:
    """report.json and frontier.json of the model folder: each the parsed dict, None when
    absent, or a string saying why it cannot be read."""
    out = {}
    for key, name in (("report", "report.json"), ("frontier", "frontier.json")):
        p = Path(folder) / name
        if not p.is_file():
            out[key] = None
            continue
        try:
            out[key] = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            out[key] = f"{p} cannot be read ({exc})"
    return out
