"""Shared pieces of the benchmarks: ground truths, thick-slice inputs via `sr4zct simulate`, baselines, metrics.

Every figure is computed against a thin-slice truth: thick slices are simulated from it with the
product's own `sr4zct simulate`, each method brings them back to the truth's grid, and PSNR/SSIM are
measured on the central region (margins of one slice thickness in z and 10 % in-plane excluded).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SR4ZCT"))

from SR4ZCTLib import Acquisition, cli  # noqa: E402
from SR4ZCTLib.enhance import EnhanceOptions, enhance  # noqa: E402
from SR4ZCTLib.core.forward import CONSISTENCY_LAMBDA, simulate_thick_slices  # noqa: E402
from SR4ZCTLib.core.inference import interpolation_to_grid, project_onto_measurements  # noqa: E402
from SR4ZCTLib.core.intensity import PSNR_WINDOW_HU, psnr  # noqa: E402
from SR4ZCTLib.core.phantom import make_phantom  # noqa: E402
from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry  # noqa: E402
from SR4ZCTLib.io.volumes import read_volume, write_volume  # noqa: E402

VHM = ROOT.parent / "shared" / "data" / "vhm_head_1mm.nrrd"
FULL_WINDOW_HU = PSNR_WINDOW_HU
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)
PAPER_SETTINGS = [(2.5, 1.25), (3.75, 1.875), (5.0, 2.5), (6.25, 3.125)]
EXTRA_SETTINGS = [(5.0, 2.0), (5.0, 3.0), (3.0, 3.0), (3.0, 4.0)]


@dataclass
class Truth:
    name: str
    volume: np.ndarray  # (z, y, x) HU, isotropic
    spacing_mm: float


def vhm_truth(shape=(160, 256, 256)) -> Truth:
    """A central crop of the Visible Human head-and-neck CT (1 mm isotropic).

    SR4ZCT_VHM may point to a copy: the NRRD, or an .npz with `array` (for machines without SimpleITK).
    """
    path = Path(os.environ.get("SR4ZCT_VHM", VHM))
    full = np.load(path)["array"] if path.suffix == ".npz" else read_volume(path).array
    starts = [max(0, (n - m) // 2) for n, m in zip(full.shape, shape)]
    crop = full[tuple(slice(s, s + m) for s, m in zip(starts, shape))]
    return Truth("VHM head 1 mm", crop.astype(np.float32), 1.0)


def phantom_truth(shape=(200, 192, 192)) -> Truth:
    return Truth("phantom 0.5 mm", make_phantom(shape, 0.5, seed=11, noise_hu=8.0), 0.5)


def simulate_with_cli(truth: Truth, acquisition: Acquisition, folder: Path) -> Volume:
    """Write the truth, run `sr4zct simulate` on it, read the thick-slice volume back.

    Without SimpleITK (the lent GPU machines) the same operator the command calls is applied in memory.
    """
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        thick = simulate_thick_slices(truth.volume, 0, truth.spacing_mm, acquisition).numpy()
        return Volume(np.round(thick).astype(np.int16),
                      Volume.matrix_from((0, 0, 0), (truth.spacing_mm, truth.spacing_mm, acquisition.increment_mm), np.eye(3)))
    source, target = folder / "truth.nrrd", folder / f"thick_{acquisition.thickness_mm}_{acquisition.increment_mm}.nrrd"
    if not source.exists():
        write_volume(Volume(np.round(truth.volume).astype(np.int16),
                            Volume.matrix_from((0, 0, 0), (truth.spacing_mm,) * 3, np.eye(3))), source)
    code = cli.main(["simulate", str(source), "-o", str(target), "--thickness", str(acquisition.thickness_mm),
                     "--increment", str(acquisition.increment_mm), "--profile", acquisition.profile, "--overwrite"])
    assert code == 0, "sr4zct simulate failed"
    return read_volume(target)


def _fine_positions(n_thick: int, acquisition: Acquisition, spacing: float) -> np.ndarray:
    n_fine = int(math.floor((n_thick - 1) * acquisition.increment_mm / spacing + 1e-6)) + 1
    return np.arange(n_fine) * spacing


def interpolate(thick: np.ndarray, acquisition: Acquisition, spacing: float, method: str) -> np.ndarray:
    """Bring thick slices (axis 0) to the fine grid: linear, cubic B-spline or Lanczos windowed sinc."""
    positions = _fine_positions(thick.shape[0], acquisition, spacing)
    centres = np.arange(thick.shape[0]) * acquisition.increment_mm
    data = thick.astype(np.float32)
    if method == "linear":
        return np.einsum("fs,syx->fyx", interpolation_to_grid(thick.shape[0], acquisition.increment_mm, spacing).numpy(), data)
    if method == "cubic":
        from scipy.interpolate import make_interp_spline

        return make_interp_spline(centres, data, k=3, axis=0)(positions).astype(np.float32)
    if method == "lanczos":
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(data)
        image.SetSpacing((1.0, 1.0, acquisition.increment_mm))
        size = (data.shape[2], data.shape[1], len(positions))
        result = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLanczosWindowedSinc, (0, 0, 0),
                               (1.0, 1.0, spacing), image.GetDirection(), 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(result)
    raise ValueError(method)


def consistency(estimate: np.ndarray, thick: np.ndarray, acquisition: Acquisition, spacing: float,
                regularisation: float = CONSISTENCY_LAMBDA) -> np.ndarray:
    """The product's consistency projection y + S^T (S S^T + lambda mu I)^-1 (b - S y) applied to any estimate."""
    result = torch.from_numpy(np.ascontiguousarray(estimate, dtype=np.float32)).clone()
    measured = torch.from_numpy(thick.astype(np.float32))
    project_onto_measurements(result, measured, acquisition, spacing, regularisation)
    return result.numpy()


def central(volume: np.ndarray, truth: Truth, acquisition: Acquisition) -> tuple[slice, slice, slice]:
    margin_z = int(math.ceil(acquisition.thickness_mm / truth.spacing_mm))
    n = volume.shape[0]
    y, x = volume.shape[1:]
    return (slice(margin_z, n - margin_z), slice(y // 10, y - y // 10), slice(x // 10, x - x // 10))


def window(values: np.ndarray, window_hu) -> np.ndarray:
    lo, hi = window_hu
    return np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def ssim_views(a: np.ndarray, b: np.ndarray, step: int = 8) -> tuple[float, float]:
    """Mean 2D SSIM over coronal (fixed y) and sagittal (fixed x) slices, every `step`-th slice."""
    from skimage.metrics import structural_similarity

    wa, wb = window(a, FULL_WINDOW_HU), window(b, FULL_WINDOW_HU)
    coronal = np.mean([structural_similarity(wa[:, y, :], wb[:, y, :], data_range=1.0) for y in range(0, a.shape[1], step)])
    sagittal = np.mean([structural_similarity(wa[:, :, x], wb[:, :, x], data_range=1.0) for x in range(0, a.shape[2], step)])
    return float(coronal), float(sagittal)


def score(estimate: np.ndarray, truth: Truth, acquisition: Acquisition) -> dict:
    region = central(estimate, truth, acquisition)
    a, b = estimate[region], truth.volume[: estimate.shape[0]][region]
    cor, sag = ssim_views(a, b)
    return {"psnr": psnr(a, b), "psnr_soft": psnr(a, b, SOFT_TISSUE_WINDOW_HU), "ssim_cor": cor, "ssim_sag": sag}


def run_sr4zct(thick: Volume, acquisition: Acquisition, preset: str, iterations=None, device="auto", seed=0):
    """Train once; return the trained model plus (views, consistency) variants with their inference times."""
    geometry, _ = read_through_plane_geometry(thick, acquisition.thickness_mm, acquisition.increment_mm,
                                              acquisition.profile)
    started = time.perf_counter()
    base = enhance(thick, geometry, EnhanceOptions(preset=preset, iterations=iterations, device=device, seed=seed,
                                                   consistency=False, force=True))
    train_s = base.metrics.timings["training_s"]
    variants = {"fused": (base.volume.array.astype(np.float32), base.metrics.timings["inference_s"])}
    for label, views, project in (("coronal only", ("coronal",), False), ("sagittal only", ("sagittal",), False),
                                  ("fused + consistency", ("coronal", "sagittal"), True)):
        start = time.perf_counter()
        result = enhance(thick, geometry, EnhanceOptions(device=device, views=views, consistency=project,
                                                         force=True), model=base.model)
        variants[label] = (result.volume.array.astype(np.float32), time.perf_counter() - start)
    del started
    return base, train_s, variants


def table(title: str, rows: list[tuple[str, dict, float, float]]) -> str:
    """Markdown table: method x (PSNR, soft-tissue PSNR, SSIM cor, SSIM sag, training s, inference s)."""
    lines = [f"**{title}**", "",
             "| method | PSNR dB | PSNR soft dB | SSIM cor | SSIM sag | train s | infer s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m, train_s, infer_s in rows:
        lines.append(f"| {name} | {m['psnr']:.2f} | {m['psnr_soft']:.2f} | {m['ssim_cor']:.4f} | {m['ssim_sag']:.4f} "
                     f"| {train_s:.0f} | {infer_s:.1f} |")
    return "\n".join(lines)


def machine() -> str:
    import platform

    cpu = f"{os.cpu_count()} CPU cores"
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.machine()} {cpu}{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_results(path, results: list) -> None:
    """All figures of a run as JSON, with the machine."""
    import json

    with open(path, "w") as handle:
        json.dump({"machine": machine(), "results": results}, handle, indent=2, default=float)


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="sr4zct-bench-"))
