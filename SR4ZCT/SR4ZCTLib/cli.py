"""The `sr4zct` command line: info, enhance, simulate, demo.

Errors: one `error:` line on stderr, exit 2. Cancel (Ctrl-C or SIGTERM): exit 130. Either way
nothing is left behind: every output is written to a temporary file and renamed at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .acquisition import PROFILES, Acquisition
from .errors import Cancelled, InputError, ResourceError
from .progress import Progress, Reporter

EXIT_ERROR = 2
EXIT_CANCELLED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as every other error
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_ERROR)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of millimetres")
    return value


def _consistency_lambda(text: str) -> float:
    from .forward import CONSISTENCY_LAMBDA_RANGE

    low, high = CONSISTENCY_LAMBDA_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is outside {low:g} to {high:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sr4zct", description="Self-supervised through-plane resolution enhancement for thick-slice CT.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = commands.add_parser("info", help="show geometry, increment, thickness and overlap of a volume")
    info.add_argument("input", help="DICOM series folder or .nrrd/.nii/.nii.gz/.mha file")
    info.add_argument("--thickness", type=_positive_float, help="slice thickness in mm (overrides DICOM)")
    info.add_argument("--increment", type=_positive_float, help="slice increment in mm (overrides the geometry)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)

    enhance = commands.add_parser("enhance", help="enhance a thick-slice CT volume")
    enhance.add_argument("input", help="DICOM series folder or .nrrd/.nii/.nii.gz/.mha file")
    enhance.add_argument("-o", "--output", required=True, help="output volume (.nrrd, .nii, .nii.gz or .mha)")
    _add_acquisition_arguments(enhance)
    _add_run_arguments(enhance)
    enhance.add_argument("--target-spacing", type=_positive_float, help="output slice spacing in mm (default: in-plane)")
    enhance.add_argument("--save-model", help="write the trained model here (reuse it with --model)")
    enhance.add_argument("--model", help="use this trained model instead of training (same protocol only)")
    enhance.add_argument("--report", help="folder for report.png and metrics.json")
    enhance.add_argument("--overwrite", action="store_true", help="replace an existing output")
    enhance.set_defaults(handler=_enhance)

    simulate = commands.add_parser("simulate", help="make thick slices from a thin-slice volume (forward model)")
    simulate.add_argument("input")
    simulate.add_argument("-o", "--output", required=True)
    simulate.add_argument("--thickness", type=_positive_float, required=True, help="slice thickness (FWHM) in mm")
    simulate.add_argument("--increment", type=_positive_float, required=True, help="slice increment in mm")
    simulate.add_argument("--profile", choices=PROFILES, default="box")
    simulate.add_argument("--axis", choices=("i", "j", "k"),
                          help="axis to make thick (default: the DICOM stacking axis, else k)")
    simulate.add_argument("--overwrite", action="store_true")
    simulate.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    simulate.set_defaults(handler=_simulate)

    demo = commands.add_parser("demo", help="enhance the bundled 5 mm chest CT sample")
    demo.add_argument("--out", default="sr4zct-demo", help="folder for enhanced.nrrd, report.png, metrics.json")
    _add_run_arguments(demo)
    demo.set_defaults(handler=_demo)
    return parser


def _add_acquisition_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thickness", type=_positive_float, help="slice thickness in mm (default: DICOM SliceThickness)")
    parser.add_argument("--increment", type=_positive_float, help="slice increment in mm (default: from slice positions)")
    parser.add_argument("--profile", choices=PROFILES, default="box", help="slice profile (default: box)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from .forward import CONSISTENCY_LAMBDA, CONSISTENCY_LAMBDA_RANGE

    parser.add_argument("--preset", choices=("fast", "paper"), default="fast")
    parser.add_argument("--iterations", type=int, help="training iterations (overrides the preset)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--consistency", choices=("on", "off"),
                        help="project the output onto the measured slices (default: the preset's: fast on, paper off)")
    parser.add_argument("--consistency-lambda", type=_consistency_lambda, default=CONSISTENCY_LAMBDA, metavar="L",
                        help=f"the projection's relative regularisation, {CONSISTENCY_LAMBDA_RANGE[0]:g} to "
                             f"{CONSISTENCY_LAMBDA_RANGE[1]:g}; smaller fits the slices closer (default {CONSISTENCY_LAMBDA:g})")
    parser.add_argument("--allow-non-hu", action="store_true", help="enhance volumes that are not CT in HU")
    parser.add_argument("--force", action="store_true", help="run even when the memory estimate exceeds what is free")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress on stderr: a bar, JSON lines (for the Slicer module), or nothing")


class _ProgressPrinter:
    """Progress on stderr: one tqdm bar per stage, or one JSON object per line."""

    def __init__(self, style: str) -> None:
        self.style, self.bar, self.stage = style, None, None

    def __call__(self, progress: Progress) -> None:
        if self.style == "json":
            sys.stderr.write(json.dumps(progress.as_dict(), default=float) + "\n")
            sys.stderr.flush()
        elif self.style == "bar":
            from tqdm import tqdm

            if progress.stage != self.stage:
                self.close()
                self.stage = progress.stage
                self.bar = tqdm(total=1000, desc=progress.stage, file=sys.stderr, leave=True,
                                bar_format="{desc:<12}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
            self.bar.set_postfix_str(progress.message[:90], refresh=False)
            self.bar.update(int(round(progress.fraction * 1000)) - self.bar.n)  # redraws at most every 0.1 s

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _read_geometry(args):
    from .volume import read_through_plane_geometry
    from .volume_io import read_volume

    volume = read_volume(args.input)
    geometry, notes = read_through_plane_geometry(volume, args.thickness, args.increment, getattr(args, "profile", "box"))
    return volume, geometry, notes


def _warn(notes: list[str]) -> None:
    for note in notes:
        sys.stderr.write(f"warning: {note}\n")


def _info(args) -> int:
    volume, geometry, notes = _read_geometry(args)
    _warn(notes)
    summary = geometry.as_dict(volume)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:28s} {value}")
    return 0


def _run_options(args):
    from .enhance import EnhanceOptions

    return EnhanceOptions(preset=args.preset, iterations=args.iterations, device=args.device, seed=args.seed,
                          consistency=None if args.consistency is None else args.consistency == "on",
                          consistency_lambda=args.consistency_lambda, allow_non_hu=args.allow_non_hu, force=args.force,
                          target_spacing_mm=getattr(args, "target_spacing", None))


class _Outputs:
    """Files written by this run; removed again if the run fails or is cancelled."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, *paths) -> None:
        self.paths.extend(Path(p) for p in paths)

    def roll_back(self) -> None:
        for path in self.paths:
            if path.exists():
                path.unlink()


def _finish(volume, geometry, result, output: Path, args, outputs: _Outputs, report_folder: Optional[str]) -> None:
    from .report import write_report
    from .volume_io import write_volume

    outputs.add(write_volume(result.volume, output, overwrite=args.overwrite))
    if getattr(args, "save_model", None):
        outputs.add(result.model.save(args.save_model))
    if report_folder:
        outputs.add(*write_report(report_folder, volume, geometry, result.volume, result.metrics))


def _run_enhance(volume, geometry, notes, output: Path, args, report_folder: Optional[str], model=None) -> dict:
    from .enhance import enhance

    _warn(notes)
    printer = _ProgressPrinter(args.progress)
    outputs = _Outputs()
    try:
        result = enhance(volume, geometry, _run_options(args), model=model, reporter=Reporter(printer))
        printer.close()
        _finish(volume, geometry, result, output, args, outputs, report_folder)
        if args.progress == "json":  # the last line: the figures, for the Slicer module's panel
            summary = {k: v for k, v in result.metrics.items() if k != "training"}
            summary["training"] = {k: v for k, v in result.metrics["training"].items() if k not in ("history", "config")}
            printer(Progress("done", 1.0, "finished", summary))
    except BaseException:
        printer.close()
        outputs.roll_back()
        raise
    return result.metrics


def _print_summary(metrics: dict, output: Path) -> None:
    training = metrics.get("training", {})
    line = f"wrote {output} ({' x '.join(map(str, metrics['output_shape']))})"
    if "validation_psnr_db" in training:
        line += (f"; held-out in-plane stand-in PSNR {training['validation_psnr_db']:.2f} dB, "
                 f"linear interpolation {training['validation_linear_psnr_db']:.2f} dB")
    timings = metrics["timings"]
    line += f"; {timings['total_s']:.0f} s on {metrics['device']}"
    print(line)


def _enhance(args) -> int:
    from .enhance import TrainedModel
    from .volume_io import check_output_path

    output = check_output_path(args.output, [args.input], args.overwrite)
    for path in (args.save_model, args.report):
        if path and Path(path).resolve() == Path(args.input).resolve():
            raise InputError(f"{path} would overwrite the input; choose another path")
    model = TrainedModel.load(args.model) if args.model else None
    volume, geometry, notes = _read_geometry(args)
    metrics = _run_enhance(volume, geometry, notes, output, args, args.report, model)
    _print_summary(metrics, output)
    return 0


def _simulate(args) -> int:
    from .enhance import to_output_type
    from .forward import simulate_thick_slices
    from .volume import AXIS_NAMES, Volume, check_orthogonal, check_volume_shape
    from .volume_io import check_output_path, read_volume, write_volume

    output = check_output_path(args.output, [args.input], args.overwrite)
    acquisition = Acquisition(args.thickness, args.increment, args.profile)
    volume = read_volume(args.input)
    check_volume_shape(volume.array)
    check_orthogonal(volume)
    axis = AXIS_NAMES.index(args.axis) if args.axis else (volume.slice_axis if volume.slice_axis is not None else 2)
    spacing = float(volume.spacing[axis])
    if args.increment < spacing:
        raise InputError(f"increment {args.increment:g} mm is finer than the input's slice spacing {spacing:g} mm; "
                         "simulate from a thinner-slice volume")
    thick = to_output_type(simulate_thick_slices(volume.array, 2 - axis, spacing, acquisition), volume.array.dtype)
    matrix = volume.ijk_to_world.copy()
    matrix[:3, axis] = volume.directions[:, axis] * args.increment
    write_volume(Volume(thick, matrix), output, overwrite=args.overwrite)
    print(f"wrote {output}: {thick.shape[2 - axis]} slices, {acquisition.describe()}")
    return 0


def _demo(args) -> int:
    from .sample import load_sample, sample_info
    from .volume import read_through_plane_geometry

    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    args.overwrite, args.save_model = True, None  # the demo refreshes its own folder
    volume = load_sample()
    geometry, notes = read_through_plane_geometry(volume)
    print(f"SR4ZCT demo: {sample_info()['description']}", file=sys.stderr)
    output = folder / "enhanced.nrrd"
    metrics = _run_enhance(volume, geometry, notes, output, args, str(folder))
    _print_summary(metrics, output)
    print(f"report: {folder / 'report.png'}, metrics: {folder / 'metrics.json'}")
    return 0


def _raise_cancelled(signum, frame) -> None:
    raise Cancelled("terminated")


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `sr4zct`; returns the exit code (0, 2 on bad input, 130 when cancelled)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed as one `error:` line
        return int(exit_request.code or 0)
    previous: Optional[Callable] = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_cancelled)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        previous = None
    warnings.showwarning = lambda message, *rest, **kw: sys.stderr.write(f"warning: {message}\n")
    try:
        return int(args.handler(args) or 0)
    except (InputError, ResourceError) as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_ERROR
    except (KeyboardInterrupt, Cancelled):
        sys.stderr.write("cancelled: nothing was written\n")
        return EXIT_CANCELLED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
