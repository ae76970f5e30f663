"""The run report: a PNG of coronal and sagittal views (as acquired, linear, enhanced) and a metrics JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .forward import linear_interpolation_matrix
from .volume import ThroughPlaneGeometry, Volume
from .volume_io import write_atomically

DISPLAY_WINDOW_HU = (-1000.0, 600.0)


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


def write_report(folder: str | Path, volume: Volume, geometry: ThroughPlaneGeometry, enhanced: Volume,
                 metrics: dict) -> list[Path]:
    """Write report.png and metrics.json into folder (created if needed); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planes = comparison_planes(volume, geometry, enhanced)
    in_plane = min(geometry.in_plane_spacing_mm)
    z_step = float(enhanced.spacing[geometry.axis])
    head_up = volume.directions[2, geometry.axis] > 0  # world z grows towards the head (LPS and RAS alike)
    figure, axes = plt.subplots(2, 3, figsize=(13, 8.5), squeeze=False)
    for row, (view, images) in enumerate(planes.items()):
        for column, (title, image) in enumerate(images.items()):
            axis = axes[row][column]
            axis.imshow(image, cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1],
                        aspect=z_step / in_plane, origin="lower" if head_up else "upper", interpolation="nearest")
            axis.set_title(f"{view}: {title}")
            axis.set_xticks([])
            axis.set_yticks([])
    training = metrics.get("training", {})
    acquisition = geometry.acquisition
    subtitle = f"{acquisition.describe()}; output every {z_step:.3g} mm"
    if "validation_psnr_db" in training:
        subtitle += (f"; held-out in-plane stand-in PSNR {training['validation_psnr_db']:.2f} dB "
                     f"vs linear {training['validation_linear_psnr_db']:.2f} dB")
    figure.suptitle(f"SR4ZCT\n{subtitle}", fontsize=11)
    figure.tight_layout()
    png, json_path = folder / "report.png", folder / "metrics.json"
    try:
        write_atomically(png, lambda name: figure.savefig(name, dpi=90, format="png"))
    finally:
        plt.close(figure)
    write_atomically(json_path, lambda name: Path(name).write_text(json.dumps(metrics, indent=2, default=float)))
    return [png, json_path]
