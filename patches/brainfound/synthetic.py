"""Synthetic head volumes for the tiny Brainfound runs and tests (no real data is shipped or downloaded).

``synthetic_head`` draws a crude axial head: air background, a skull ellipse (bone), brain parenchyma, two
ventricles, plus an optional lesion: ``hemorrhage`` (hyperdense blob), ``infarction`` (hypodense wedge),
``tumor`` (ring), ``fracture`` (a gap in the skull). CT volumes are in HU; MRI ones in arbitrary units with the
contrast inverted for T2. Shapes, positions and sizes vary with the generator, so classes differ in content, not
in a fixed pixel pattern. ``synthetic_report`` writes a matching short report.
"""
from __future__ import annotations

import numpy as np

LESIONS = ("normal", "hemorrhage", "infarction", "fracture", "tumor")
FINDINGS = {  # a few phrasings per class; a report = shuffled findings + "impression : <class> ." (Brainfound's
    # stage-2 texts are the class sentence itself, so zero-shot prompts follow the impression wording)
    "normal": ["no abnormal density", "midline centered", "ventricles normal in size"],
    "hemorrhage": ["hyperdense bleeding in the parenchyma", "high density blood focus", "acute bleed"],
    "infarction": ["hypodense ischemic area", "low density territory", "loss of grey white differentiation"],
    "fracture": ["discontinuity of the skull bone", "skull break", "bony defect"],
    "tumor": ["ring shaped mass", "space occupying lesion", "enhancing rim mass"],
}


def synthetic_report(rng: np.random.Generator, label: str) -> str:
    found = [f for f in FINDINGS[label] if rng.random() < 0.7] or [FINDINGS[label][0]]
    rng.shuffle(found)
    return " . ".join(found) + f" . impression : {label} ."


def synthetic_head(rng: np.random.Generator, depth: int = 8, size: int = 48, lesion: str = "normal",
                   modality: str = "CT") -> np.ndarray:
    """A ``[depth, size, size]`` float32 volume (HU for CT)."""
    if lesion not in LESIONS:
        raise ValueError(f"lesion must be one of {LESIONS}, got {lesion!r}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    ry, rx = rng.uniform(0.75, 0.9), rng.uniform(0.65, 0.8)
    cy, cx = rng.uniform(-0.05, 0.05, size=2)
    vol = np.full((depth, size, size), -1000.0, np.float32)
    ly, lx, lr = rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.35), rng.uniform(0.15, 0.25)
    gap = rng.uniform(-np.pi, np.pi)
    for z in range(depth):
        shrink = 1.0 - 0.5 * abs((z - (depth - 1) / 2) / max(depth / 2, 1)) ** 2
        r = ((yy - cy) / (ry * shrink)) ** 2 + ((xx - cx) / (rx * shrink)) ** 2
        sl = vol[z]
        sl[r <= 1.0] = 900.0 + rng.normal(0, 30)  # skull
        sl[r <= 0.8] = 32.0  # parenchyma
        for side in (-1, 1):  # ventricles
            v = ((yy - cy) / (0.25 * shrink)) ** 2 + ((xx - cx - side * 0.12) / (0.07 * shrink)) ** 2
            sl[v <= 1.0] = 6.0
        lesion_here = abs(z - depth // 2) <= max(1, depth // 4)
        d = np.sqrt((yy - ly) ** 2 + (xx - lx) ** 2)
        if lesion == "hemorrhage" and lesion_here:
            sl[(d <= lr) & (r <= 0.8)] = 75.0
        elif lesion == "infarction" and lesion_here:
            sl[(d <= lr * 1.3) & (r <= 0.8)] = 12.0
        elif lesion == "tumor" and lesion_here:
            sl[(d <= lr) & (d >= lr * 0.6) & (r <= 0.8)] = 55.0
        elif lesion == "fracture":
            ang = np.arctan2(yy - cy, xx - cx)
            sl[(np.abs(np.angle(np.exp(1j * (ang - gap)))) < 0.12) & (r > 0.8) & (r <= 1.0)] = 20.0
        sl += rng.normal(0, 3.0, size=sl.shape).astype(np.float32)
    if modality.upper() == "CT":
        return vol
    brain = np.clip(vol, -100, 200) + 100.0
    return (brain.max() - brain if modality == "T2" else brain).astype(np.float32) * 4.0
