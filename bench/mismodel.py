"""Mis-modelling: train with a wrong thickness or overlap, keep the true slice positions (the paper's point).

    python bench/mismodel.py --device cuda          # VHM crop, true 5 mm every 2.5 mm
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import Acquisition, machine, score, simulate_with_cli, vhm_truth, workdir
from SR4ZCTLib.enhance import EnhanceOptions, TrainedModel, enhance
from SR4ZCTLib.core.device import resolve_device
from SR4ZCTLib.core.intensity import Normalisation
from SR4ZCTLib.core.training import preset, train_network
from SR4ZCTLib.core.volume import read_through_plane_geometry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    truth = vhm_truth()
    true = Acquisition(5.0, 2.5)
    thick = simulate_with_cli(truth, true, workdir())
    geometry, _ = read_through_plane_geometry(thick, true.thickness_mm, true.increment_mm)
    device, _ = resolve_device(args.device)
    config = preset("fast").with_iterations(args.iterations)
    stack = torch.from_numpy(thick.array.astype(np.float32) / 1000.0)
    assumed = [(t, 2.5) for t in (4.5, 4.75, 5.0, 5.25, 5.5)] + [(5.0, 5.0 - o) for o in (2.0, 2.25, 2.75, 3.0)]
    rows = []
    for thickness, increment in assumed:
        model_acquisition = Acquisition(thickness, increment)
        trained = train_network(stack, (1.0, 1.0), model_acquisition, config, Normalisation(), device, seed=0)
        model = TrainedModel(trained.network, config.architecture, dict(config.network_options), true, 1.0,
                             Normalisation())  # labelled with the true acquisition so inference uses the real grid
        result = enhance(thick, geometry, EnhanceOptions(device=args.device, consistency=False, force=True),
                         model=model)
        metrics = score(result.volume.array.astype(np.float32), truth, true)
        rows.append((thickness, thickness - increment, metrics["psnr"], metrics["ssim_cor"]))
        print(f"assumed thickness {thickness:.2f} mm, overlap {thickness - increment:.2f} mm: "
              f"PSNR {metrics['psnr']:.2f} dB", flush=True)
    print("\n**Mis-modelling on VHM, truth 5 mm every 2.5 mm (overlap 2.5 mm); fast preset, no consistency projection**\n")
    print("| assumed thickness mm | assumed overlap mm | PSNR dB | SSIM cor | vs right model dB |")
    print("|---:|---:|---:|---:|---:|")
    right = next(r[2] for r in rows if r[0] == 5.0 and abs(r[1] - 2.5) < 1e-9)
    for thickness, overlap, value, ssim in rows:
        mark = " (right)" if thickness == 5.0 and abs(overlap - 2.5) < 1e-9 else ""
        print(f"| {thickness:.2f}{mark} | {overlap:.2f} | {value:.2f} | {ssim:.4f} | {value - right:+.2f} |")


if __name__ == "__main__":
    main()
