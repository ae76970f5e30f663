"""The run report: a PNG of coronal and sagittal views (as acquired, linear, enhanced) and a metrics JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from .core.forward import linear_interpolation_matrix
from .core.volume import ThroughPlaneGeometry, Volume
from .metrics import RunMetrics, strict_json

DISPLAY_WINDOW_HU = (-1000.0, 600.0)
CONFIDENCE_FLOOR = 0.1  # disagreement below this fraction of the top value is left uncoloured


def _central_planes(stack: np.ndarray) -> dict[str, np.ndarray]:
    return {"coronal": np.asarray(stack[:, stack.shape[1] // 2, :], dtype=np.float32),
            "sagittal": np.asarray(stack[:, :, stack.shape[2] // 2], dtype=np.float32)}


def comparison_planes(volume: Volume, geometry: ThroughPlaneGeometry, enhanced: Volume) -> dict[str, dict[str, np.ndarray]]:
    """Central coronal and sagittal planes of the input (slices replicated), linear interpolation and the result."""
    stack = np.moveaxis(volume.array, geometry.array_axis, 0)
    result = np.moveaxis(enhanced.array, geometry.array_axis, 0)
    n_fine = result.shape[0]
    step = float(enhanced.spacing[geometry.axis])
    positions = np.arange(n_fine) * step / geometry.acquisition.increment_mm
    linear = linear_interpolation_matrix(positions, stack.shape[0])
    nearest = np.clip(np.round(positions).astype(int), 0, stack.shape[0] - 1)
    enhanced_planes = _central_planes(result)
    return {view: {"as acquired": measured[nearest], "linear": linear @ measured, "SR4ZCT": enhanced_planes[view]}
            for view, measured in _central_planes(stack).items()}


REPORT_FILES = ("report.png", "metrics.json")


def _verify_png(name: str) -> None:
    data = Path(name).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or not data.endswith(b"IEND\xaeB`\x82"):
        raise ValueError("the PNG read back is incomplete")


def _draw_disagreement(axis, image: np.ndarray, disagreement: np.ndarray, aspect: float, head_up: bool,
                       view: str) -> None:
    """The result in grey with the coronal/sagittal disagreement (HU) as a colour overlay and a colour bar."""
    origin = "lower" if head_up else "upper"
    axis.imshow(image, cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1], aspect=aspect, origin=origin,
                interpolation="nearest")
    top = max(float(np.percentile(disagreement, 99.5)), 1.0)
    shown = np.ma.masked_less(disagreement, CONFIDENCE_FLOOR * top)
    colours = axis.imshow(shown, cmap="inferno", vmin=0.0, vmax=top, alpha=0.6, aspect=aspect, origin=origin,
                          interpolation="nearest")
    axis.figure.colorbar(colours, ax=axis, fraction=0.046, pad=0.02, label="|coronal - sagittal| HU")
    axis.set_title(f"{view}: disagreement")
    axis.set_xticks([])
    axis.set_yticks([])


def stage_report(publication, folder: Path, volume: Volume, geometry: ThroughPlaneGeometry, enhanced: Volume,
                 metrics: RunMetrics, confidence: Optional[Volume] = None) -> None:
    """Stage (write and verify) report.png and metrics.json for folder.

    With a confidence map, a fourth column shows the disagreement (colour) over the result.
    Without matplotlib (Slicer's Python ships none) only metrics.json is written, with a warning.
    """
    folder = Path(folder)
    text = json.dumps(strict_json(metrics.to_json()), indent=2, allow_nan=False)
    try:
        import matplotlib
    except ImportError:
        sys.stderr.write("warning: matplotlib is not installed, so report.png was not written (pip install matplotlib)\n")
    else:
        _stage_picture(publication, folder, matplotlib, volume, geometry, enhanced, metrics, confidence)

    def verify_json(name: str) -> None:
        if Path(name).read_text() != text:
            raise ValueError("the file read back differs from what was written")

    publication.stage(folder / "metrics.json", lambda name: Path(name).write_text(text), verify_json)


def report_title(geometry, z_step: float, metrics) -> str:
    """The figure's title: the acquisition on one line, the output grid and the validation figure on the next (each
    short enough for the figure's width)."""
    lines = ["SR4ZCT", f"{geometry.acquisition.describe()}; output every {z_step:.3g} mm"]
    if metrics.validation_psnr_db is not None:
        lines.append(f"held-out in-plane stand-in PSNR {metrics.validation_psnr_db:.2f} dB "
                     f"vs linear {metrics.validation_linear_psnr_db:.2f} dB")
    return "\n".join(lines)


def _stage_picture(publication, folder: Path, matplotlib, volume: Volume, geometry: ThroughPlaneGeometry,
                   enhanced: Volume, metrics: RunMetrics, confidence: Optional[Volume]) -> None:
    """report.png: as acquired, linear and SR4ZCT (and the disagreement) on the central coronal and sagittal planes."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = comparison_planes(volume, geometry, enhanced)
    in_plane = min(geometry.in_plane_spacing_mm)
    z_step = float(enhanced.spacing[geometry.axis])
    head_up = volume.directions[2, geometry.axis] > 0  # world z grows towards the head (LPS and RAS alike)
    overlays = _central_planes(np.moveaxis(confidence.array, geometry.array_axis, 0)) if confidence is not None else {}
    figure, axes = plt.subplots(2, 4 if overlays else 3, figsize=(17 if overlays else 13, 8.5), squeeze=False)
    for row, (view, images) in enumerate(planes.items()):
        for column, (title, image) in enumerate(images.items()):
            axis = axes[row][column]
            axis.imshow(image, cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1],
                        aspect=z_step / in_plane, origin="lower" if head_up else "upper", interpolation="nearest")
            axis.set_title(f"{view}: {title}")
            axis.set_xticks([])
            axis.set_yticks([])
        if overlays:
            _draw_disagreement(axes[row][3], images["SR4ZCT"], overlays[view], z_step / in_plane, head_up, view)
    figure.suptitle(report_title(geometry, z_step, metrics), fontsize=11)
    figure.tight_layout()
    try:
        publication.stage(folder / "report.png", lambda name: figure.savefig(name, dpi=90, format="png"), _verify_png)
    finally:
        plt.close(figure)
