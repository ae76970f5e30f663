"""Where the time of `enhance` goes on a CPU, and each speed switch side by side with its held-out PSNR.

Run it alone on idle cores (other work on the machine inflates every figure):

    python bench/speed.py                                   # the demo volume, 2 threads, every variant
    python bench/speed.py --case demo large --threads 1 2   # also the 512 x 512 x 150 case, 1 and 2 threads
    python bench/speed.py --variants baseline bf16 --repeats 2   # interleaved A/B/A/B to cancel drift

Prints the command line it ran, then per case and thread count (1) a table of stages for the baseline: pairs,
training, inference per view, the consistency projection, writing with verification, report; (2) every variant:
seconds, training and inference seconds, held-out validation PSNR (RunMetrics.validation_psnr_db) and its change
from the baseline of the same run; a variant may become a default only if it loses under 0.05 dB (KEEP column).
Training is deterministic for a seed, thread count and CPU type, so repeats differ only in time.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from common import machine, vhm_truth
from SR4ZCTLib.core.device import cpu_has_native_bf16
from SR4ZCTLib.core.phantom import make_phantom
from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry
from SR4ZCTLib.enhance import enhance
from SR4ZCTLib.io.publish import OutputPlan, Publication
from SR4ZCTLib.io.volumes import stage_volume
from SR4ZCTLib.options import RunOptions
from SR4ZCTLib.progress import Progress, Reporter
from SR4ZCTLib.report import REPORT_FILES, stage_report
from SR4ZCTLib.sample import load_sample

KEEP_IF_LOSS_UNDER_DB = 0.05
FP32 = {"precision": "fp32", "channels_last": False}  # the arithmetic before issue 18: the reference
VARIANTS: dict[str, dict] = {  # name -> RunOptions fields, each variant spelled out (the default changed under it)
    "baseline": FP32,
    "bf16": FP32 | {"precision": "bf16"},
    "channels_last": FP32 | {"channels_last": True},
    "short": FP32 | {"schedule": "short"},
    "batch8": FP32 | {"batch_size": 8},
    "batch16": FP32 | {"batch_size": 16},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
    "bf16+short": FP32 | {"precision": "bf16", "schedule": "short"},
    "bf16+channels_last+short": {"precision": "bf16", "channels_last": True, "schedule": "short"},
    "default": {},  # the shipped default: fp32, channels_last on a CPU
}
STAGES = ("pairs", "training", "inference coronal", "inference sagittal", "consistency", "writing+verification",
          "report")


@dataclass
class StageClock:
    """Seconds per stage from the engine's progress reports (each report closes the time since the previous one)."""

    last: float = field(default_factory=time.perf_counter)
    seconds: dict = field(default_factory=dict)

    def __call__(self, progress: Progress) -> None:
        now = time.perf_counter()
        stage = progress.stage
        if stage == "inference":
            stage = "inference " + progress.message.split()[0]  # "coronal slices 12/256"
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


@dataclass(frozen=True)
class Case:
    name: str
    volume: Volume
    thickness_mm: Optional[float] = None  # None: the volume's own (the demo's DICOM-derived thickness)


def demo_case() -> Case:
    return Case("demo (bundled 5 mm chest CT, 64 x 256 x 256)", load_sample())


def tiny_case() -> Case:
    """A 16 x 96 x 96 phantom, 3 mm every 3 mm: a smoke check of this script, not a benchmark."""
    thin = make_phantom((48, 96, 96), 0.8, seed=2)
    array = np.round(thin.reshape(16, 3, 96, 96).mean(axis=1)).astype(np.int16)
    return Case("tiny phantom (smoke check), 16 x 96 x 96", Volume(array, Volume.matrix_from((0, 0, 0), (0.8, 0.8, 3.0),
                                                                                             np.eye(3))), 3.0)


def large_case() -> Case:
    """512 x 512 x 150 from real anatomy (the VHM crop tiled 2 x 2; a phantom without the shared data), 3 mm every 1 mm."""
    try:
        array = np.ascontiguousarray(np.tile(vhm_truth().volume[:150].astype(np.int16), (1, 2, 2)))
        source = "VHM head tiled 2 x 2"
    except (OSError, FileNotFoundError, SystemExit):
        array = np.round(make_phantom((150, 512, 512), 0.74, seed=5, vessels=12, nodules=6)).astype(np.int16)
        source = "phantom (shared data absent)"
    volume = Volume(array, Volume.matrix_from((0, 0, 0), (0.74, 0.74, 1.0), np.eye(3)))
    return Case(f"512 x 512 x 150, 3 mm every 1 mm ({source})", volume, 3.0)


def run_once(case: Case, options: RunOptions, folder: Path) -> tuple[dict, float, object, np.ndarray]:
    """One enhance with its outputs written and verified as the CLI does: (stage seconds, total seconds, metrics,
    the enhanced voxels)."""
    geometry, _ = read_through_plane_geometry(case.volume, case.thickness_mm)
    clock = StageClock()
    started = time.perf_counter()
    result = enhance(case.volume, geometry, options, reporter=Reporter(clock))
    clock.seconds.pop("reading", None)
    clock.seconds["pairs"] = result.metrics.training.get("pair_setup_seconds", 0.0)
    clock.seconds["training"] = result.metrics.training.get("training_seconds", 0.0)
    begun = time.perf_counter()
    plan = OutputPlan(None, overwrite=True)
    plan.add("-o", folder / "enhanced.nrrd", (".nrrd",))
    publish(plan, lambda publication: stage_volume(publication, result.volume, folder / "enhanced.nrrd"))
    clock.add("writing+verification", time.perf_counter() - begun)
    begun = time.perf_counter()
    plan = OutputPlan(None, overwrite=True)
    plan.add_folder("--report", folder, REPORT_FILES)
    publish(plan, lambda publication: stage_report(publication, folder, case.volume, geometry, result.volume,
                                                   result.metrics))
    clock.add("report", time.perf_counter() - begun)
    return clock.seconds, time.perf_counter() - started, result.metrics, np.asarray(result.volume.array)


def publish(plan: OutputPlan, stage) -> None:
    """Stage, verify and publish as the CLI does (io/publish.py)."""
    publication = Publication(plan)
    stage(publication)
    publication.publish()


def stage_table(title: str, seconds: dict, total: float, name: str = "baseline") -> str:
    lines = [f"\n**{title}: where the time goes ({name})**\n", "| stage | seconds | share |", "|---|---:|---:|"]
    for stage in STAGES:
        value = seconds.get(stage, 0.0)
        lines.append(f"| {stage} | {value:.1f} | {100 * value / total:.0f} % |")
    other = total - sum(seconds.get(stage, 0.0) for stage in STAGES)  # checks, resampling to the target spacing
    lines.append(f"| other (checks, resampling) | {other:.1f} | {100 * other / total:.0f} % |")
    lines.append(f"| **total** | **{total:.1f}** | |")
    return "\n".join(lines)


def variant_table(title: str, rows: list[tuple[str, float, object, tuple[float, float]]]) -> str:
    base_psnr, base_seconds = rows[0][2].validation_psnr_db, rows[0][1]  # the reference: the first variant run
    lines = [f"\n**{title}: speed switches side by side (same run, same seed)**\n",
             "| variant | total s | speed-up | training s | inference s | validation PSNR dB (linear) | change dB | "
             "output vs baseline: mean, p99.9 abs HU | KEEP |",
             "|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for name, seconds, metrics, (mean_hu, p999_hu) in rows:
        change = metrics.validation_psnr_db - base_psnr
        keep = "yes" if change > -KEEP_IF_LOSS_UNDER_DB else "no"
        lines.append(f"| {name} | {seconds:.1f} | {base_seconds / seconds:.2f}x | {metrics.timings['training_s']:.1f} | "
                     f"{metrics.timings['inference_s']:.1f} | {metrics.validation_psnr_db:.2f} "
                     f"({metrics.validation_linear_psnr_db:.2f}) | {change:+.2f} | {mean_hu:.2f}, {p999_hu:.1f} | "
                     f"{keep} |")
    return "\n".join(lines)


CASES = {"demo": demo_case, "large": large_case, "tiny": tiny_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", choices=tuple(CASES), default=["demo"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2])
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the fastest time of each is shown")
    parser.add_argument("--iterations", type=int, help="override the preset (a quick smoke run; not for the README)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not run the fp32 baseline (its figures from an earlier run); the first variant is the "
                             "reference of the change columns")
    args = parser.parse_args()
    print("command: " + " ".join(shlex.quote(word) for word in [sys.executable, *sys.argv]))
    print(f"machine: {machine()}; torch {torch.__version__}; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"native bf16: {cpu_has_native_bf16()}")
    variants = list(dict.fromkeys(([] if args.no_baseline else ["baseline"]) + args.variants))  # the first: reference
    if not cpu_has_native_bf16():
        skipped = [v for v in variants if VARIANTS[v].get("precision") == "bf16"]  # "default" then runs fp32
        variants = [v for v in variants if v not in skipped]
        print(f"skipped (no native bf16 on this CPU): {', '.join(skipped) or 'none'}")
    for case in [CASES[name]() for name in args.case]:
        for threads in args.threads:
            base = RunOptions(device="cpu", threads=threads, seed=args.seed, iterations=args.iterations)
            best: dict[str, tuple[float, object, dict]] = {}
            differences: dict[str, tuple[float, float]] = {}
            reference: Optional[np.ndarray] = None
            with tempfile.TemporaryDirectory(prefix="sr4zct-speed-") as scratch:
                for repeat in range(args.repeats):
                    for name in variants:  # interleaved: A B C A B C, so drift in the machine's load hits all alike
                        folder = Path(scratch) / f"{name}-{repeat}"
                        folder.mkdir()
                        stages, seconds, metrics, voxels = run_once(case, replace(base, **VARIANTS[name]), folder)
                        if reference is None:  # the baseline runs first
                            reference = voxels.astype(np.float32)
                        change = np.abs(voxels.astype(np.float32) - reference)
                        differences[name] = (float(change.mean()), float(np.percentile(change, 99.9)))
                        del voxels, change
                        print(f"  {case.name}, {threads} thread(s), {name}, repeat {repeat + 1}: {seconds:.1f} s, "
                              f"validation {metrics.validation_psnr_db:.2f} dB", flush=True)
                        if name not in best or seconds < best[name][0]:
                            best[name] = (seconds, metrics, stages)
            title = f"{case.name}, {threads} thread(s)"
            print(stage_table(title, best[variants[0]][2], best[variants[0]][0], variants[0]))
            print(variant_table(title, [(name, best[name][0], best[name][1], differences[name]) for name in variants]))


if __name__ == "__main__":
    main()
