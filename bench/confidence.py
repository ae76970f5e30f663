"""Does the confidence map mark the error? Rank correlation of |coronal - sagittal| with |result - truth|.

Thick slices are simulated from the truth with `sr4zct simulate`, enhanced with
`sr4zct enhance --confidence`, and within the central region and a body mask (truth or result
above -500 HU, dilated 3 voxels) we measure Spearman's rho between disagreement and absolute error:
per slab (the output slices between two thick-slice centres; median, quartiles, minimum over slabs),
over slab means, and voxel-wise over the whole region. For scale the same figures are given for a
learning-free predictor, the through-plane gradient magnitude of the result.

    python bench/confidence.py --truth vhm --settings 5/2.5 --device cpu
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.stats import spearmanr

from common import (Acquisition, EnhanceOptions, central, cli, enhance, machine, phantom_truth, read_through_plane_geometry,
                    read_volume, simulate_with_cli, vhm_truth, workdir)

BODY_HU = -500.0


def rank_correlations(predictor: np.ndarray, error: np.ndarray, mask: np.ndarray, slab_of: np.ndarray) -> dict:
    """Spearman rho of predictor vs error: per slab (median, quartiles, min), over slab means, and voxel-wise."""
    per_slab, means = [], []
    for slab in np.unique(slab_of):
        inside = mask & (slab_of == slab)[:, None, None]
        if inside.sum() < 100:
            continue
        per_slab.append(spearmanr(predictor[inside], error[inside]).statistic)
        means.append((predictor[inside].mean(), error[inside].mean()))
    means = np.array(means)
    step = max(1, int(mask.sum()) // 2_000_000)  # voxel-wise on a regular subsample
    rho_voxels = spearmanr(predictor[mask][::step], error[mask][::step]).statistic
    q1, median, q3 = np.percentile(per_slab, [25, 50, 75])
    return {"slabs": len(per_slab), "per_slab_median": float(median), "per_slab_q1": float(q1), "per_slab_q3": float(q3),
            "per_slab_min": float(np.min(per_slab)), "slab_means": float(spearmanr(means[:, 0], means[:, 1]).statistic),
            "voxels": float(rho_voxels)}


def enhance_with_confidence(truth, acquisition: Acquisition, args) -> tuple[np.ndarray, np.ndarray, str]:
    """(result, disagreement, command): `sr4zct simulate` + `sr4zct enhance --confidence`, or without SimpleITK
    (the lent GPU machines) the same engine calls in memory."""
    folder = workdir()
    thick = simulate_with_cli(truth, acquisition, folder)
    options = ["--thickness", str(acquisition.thickness_mm), "--increment", str(acquisition.increment_mm),
               "--device", args.device, "--progress", "none", "--force"]
    options += ["--iterations", str(args.iterations)] if args.iterations else []
    command = "sr4zct enhance THICK.nrrd -o enhanced.nrrd --confidence confidence.nrrd " + " ".join(options)
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        geometry, _ = read_through_plane_geometry(thick, acquisition.thickness_mm, acquisition.increment_mm)
        result = enhance(thick, geometry, EnhanceOptions(device=args.device, iterations=args.iterations, force=True,
                                                         confidence=True))
        return result.volume.array.astype(np.float32), result.confidence.array, command + " (in memory)"
    source = folder / f"thick_{acquisition.thickness_mm}_{acquisition.increment_mm}.nrrd"
    code = cli.main(["enhance", str(source), "-o", str(folder / "enhanced.nrrd"), "--confidence",
                     str(folder / "confidence.nrrd"), *options])
    assert code == 0, "sr4zct enhance failed"
    return (read_volume(folder / "enhanced.nrrd").array.astype(np.float32),
            read_volume(folder / "confidence.nrrd").array.astype(np.float32), command)


def measure(truth, acquisition: Acquisition, args) -> dict:
    result, disagreement, command = enhance_with_confidence(truth, acquisition, args)
    reference = truth.volume[: result.shape[0]]
    region = central(result, truth, acquisition)
    error = np.abs(result - reference)[region]
    body = binary_dilation((reference > BODY_HU) | (result > BODY_HU), iterations=3)[region]
    positions = np.arange(result.shape[0]) * truth.spacing_mm
    slab_of = np.floor(positions / acquisition.increment_mm + 1e-6).astype(int)[region[0]]
    gradient = np.abs(np.gradient(result, axis=0))[region]
    return {
        "truth": truth.name, "acquisition": acquisition.describe(), "machine": machine(), "command": command,
        "mean_abs_error_hu": float(error[body].mean()), "mean_disagreement_hu": float(disagreement[region][body].mean()),
        "disagreement": rank_correlations(disagreement[region], error, body, slab_of),
        "through_plane_gradient": rank_correlations(gradient, error, body, slab_of),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", choices=("vhm", "phantom"), default="vhm")
    parser.add_argument("--settings", default="5/2.5", help="thickness/increment pairs in mm, comma-separated")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int)
    args = parser.parse_args()
    truth = vhm_truth() if args.truth == "vhm" else phantom_truth()
    for pair in args.settings.split(","):
        thickness, increment = (float(v) for v in pair.split("/"))
        print(json.dumps(measure(truth, Acquisition(thickness, increment), args), indent=2), flush=True)


if __name__ == "__main__":
    main()
