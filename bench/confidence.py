"""Does the confidence map mark the error? Rank correlation of |coronal - sagittal| with |result - truth|.

Thick slices are simulated from the truth with `sr4zct simulate`, enhanced with
`sr4zct enhance --confidence`, and within the central region and a body mask (truth or result
above -500 HU, dilated 3 voxels) we measure Spearman's rho between disagreement and absolute error:
per slab (the output slices between two thick-slice centres; median, quartiles, minimum over slabs),
over slab means, and voxel-wise over the whole region. For scale the same figures are given for a
learning-free predictor, the through-plane gradient magnitude of the result.

    python bench/confidence.py --truth vhm --thickness 5 --increment 2.5 --device cpu
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.stats import spearmanr

from common import Acquisition, cli, machine, phantom_truth, read_volume, simulate_with_cli, vhm_truth, workdir, central

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", choices=("vhm", "phantom"), default="vhm")
    parser.add_argument("--thickness", type=float, default=5.0)
    parser.add_argument("--increment", type=float, default=2.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int)
    args = parser.parse_args()
    truth = vhm_truth() if args.truth == "vhm" else phantom_truth()
    acquisition = Acquisition(args.thickness, args.increment)
    folder = workdir()
    thick = simulate_with_cli(truth, acquisition, folder)
    del thick
    command = ["enhance", str(folder / f"thick_{acquisition.thickness_mm}_{acquisition.increment_mm}.nrrd"),
               "-o", str(folder / "enhanced.nrrd"), "--confidence", str(folder / "confidence.nrrd"),
               "--thickness", str(args.thickness), "--increment", str(args.increment), "--device", args.device,
               "--progress", "none", "--force"] + (["--iterations", str(args.iterations)] if args.iterations else [])
    assert cli.main(command) == 0, "sr4zct enhance failed"
    result = read_volume(folder / "enhanced.nrrd").array.astype(np.float32)
    disagreement = read_volume(folder / "confidence.nrrd").array.astype(np.float32)
    reference = truth.volume[: result.shape[0]]
    region = central(result, truth, acquisition)
    error = np.abs(result - reference)[region]
    body = binary_dilation((reference > BODY_HU) | (result > BODY_HU), iterations=3)[region]
    positions = np.arange(result.shape[0]) * truth.spacing_mm
    slab_of = np.floor(positions / acquisition.increment_mm + 1e-6).astype(int)[region[0]]
    gradient = np.abs(np.gradient(result, axis=0))[region]
    figures = {
        "truth": truth.name, "acquisition": acquisition.describe(), "machine": machine(),
        "command": "sr4zct " + " ".join(command[:1] + ["THICK.nrrd"] + command[2:]),
        "mean_abs_error_hu": float(error[body].mean()), "mean_disagreement_hu": float(disagreement[region][body].mean()),
        "disagreement": rank_correlations(disagreement[region], error, body, slab_of),
        "through_plane_gradient": rank_correlations(gradient, error, body, slab_of),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
