"""The run report: a PNG of coronal and sagittal views (as acquired, linear, enhanced) and a metrics JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from .forward import linear_interpolation_matrix
from .volume import ThroughPlaneGeometry, Volume
from .volume_io import write_atomically

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


def _write_metrics(path: Path, metrics: dict) -> None:
    write_atomically(path, lambda name: Path(name).write_text(json.dumps(metrics, indent=2, default=float)))


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


def write_report(folder: str | Path, volume: Volume, geometry: ThroughPlaneGeometry, enhanced: Volume,
                 metrics: dict, confidence: Optional[Volume] = None) -> list[Path]:
    """Write report.png and metrics.json into folder (created if needed); returns the paths written.

    With a confidence map, a fourth column shows the disagreement (colour) over the result.
    Without matplotlib (Slicer's Python ships none) only metrics.json is written, with a warning.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "metrics.json"
    try:
        import matplotlib
    except ImportError:
        sys.stderr.write("warning: matplotlib is not installed, so report.png was not written (pip install matplotlib)\n")
        _write_metrics(json_path, metrics)
        return [json_path]
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
    training = metrics.get("training", {})
    acquisition = geometry.acquisition
    subtitle = f"{acquisition.describe()}; output every {z_step:.3g} mm"
    if "validation_psnr_db" in training:
        subtitle += (f"; held-out validation PSNR {training['validation_psnr_db']:.2f} dB "
                     f"vs linear {training['validation_linear_psnr_db']:.2f} dB")
    figure.suptitle(f"SR4ZCT\n{subtitle}", fontsize=11)
    figure.tight_layout()
    png = folder / "report.png"
    try:
        write_atomically(png, lambda name: figure.savefig(name, dpi=90, format="png"))
    finally:
        plt.close(figure)
    _write_metrics(json_path, metrics)
    return [png, json_path]
