"""The `sr4zct` command line: info, enhance, simulate, demo, send, batch.

Errors: one `error:` line on stderr, exit 2. Cancel (Ctrl-C, SIGTERM or SIGHUP): exit 130. Either way
nothing is left behind: every output path is checked before any work, and every output is staged,
verified and published together at the end (publish.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..core.acquisition import PROFILES, Acquisition
from ..batch import add_batch_command
from .clinic import add_enhance_arguments, check_enhance_outputs, send_result, write_dicom_result
from ..errors import Cancelled, InputError, ResourceError
from ..limits import RANGES, check_range
from ..progress import Progress, Reporter
from ..io.send import add_send_command

EXIT_ERROR = 2
EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as shell tools report it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as every other error
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_ERROR)


def _number(name: str, kind: type = float) -> Callable[[str], float]:
    """An argparse type: a number within RANGES[name] (limits.py), else a usage error giving the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{' whole' if kind is int else ''} number") from None
        if kind is float and (not np.isfinite(value) or value <= 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of millimetres")
        try:
            return check_range(name, value)
        except InputError:
            low, high = RANGES[name]
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}"
                                             f"{' mm' if kind is float else ''}") from None

    return parse


def _add_volume_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="DICOM series folder or .nrrd/.nhdr/.nii/.nii.gz/.mha/.mhd file")
    parser.add_argument("--allow-external-data", action="store_true",
                        help="read a .nhdr/.mhd whose data file lies outside the header's folder")


def _consistency_lambda(text: str) -> float:
    from ..core.forward import CONSISTENCY_LAMBDA_RANGE

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
    _add_volume_input(info)
    info.add_argument("--thickness", type=_number("thickness"), help="slice thickness in mm (overrides DICOM)")
    info.add_argument("--increment", type=_number("increment"), help="slice increment in mm (overrides the geometry)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)

    enhance = commands.add_parser("enhance", help="enhance a thick-slice CT volume")
    _add_volume_input(enhance)
    enhance.add_argument("-o", "--output", required=True,
                         help="output volume (.nrrd, .nii, .nii.gz or .mha), or a folder for a DICOM series")
    _add_acquisition_arguments(enhance)
    _add_run_arguments(enhance)
    enhance.add_argument("--target-spacing", type=_number("target-spacing"),
                         help="output slice spacing in mm, 0.05 mm up to the increment (default: in-plane)")
    enhance.add_argument("--axis", choices=("i", "j", "k"),
                         help="through-plane voxel axis (default: the DICOM slice normal, else the coarsest spacing)")
    enhance.add_argument("--save-model", help="write the trained model here (reuse it with --model)")
    enhance.add_argument("--model", help="use this trained model instead of training (same protocol only)")
    enhance.add_argument("--report", help="folder for report.png and metrics.json")
    enhance.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_enhance_arguments(enhance)
    enhance.set_defaults(handler=_enhance)

    simulate = commands.add_parser("simulate", help="make thick slices from a thin-slice volume (forward model)")
    _add_volume_input(simulate)
    simulate.add_argument("-o", "--output", required=True)
    simulate.add_argument("--thickness", type=_number("thickness"), required=True, help="slice thickness (FWHM) in mm")
    simulate.add_argument("--increment", type=_number("increment"), required=True, help="slice increment in mm")
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
    add_send_command(commands)
    add_batch_command(commands, _add_acquisition_arguments, _add_run_arguments)
    return parser


def _add_acquisition_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thickness", type=_number("thickness"),
                        help="slice thickness in mm, 0.1..50 (default: DICOM SliceThickness)")
    parser.add_argument("--increment", type=_number("increment"),
                        help="slice increment in mm, 0.1..50 (default: from slice positions)")
    parser.add_argument("--profile", choices=PROFILES, default="box", help="slice profile (default: box)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from ..core.forward import CONSISTENCY_LAMBDA, CONSISTENCY_LAMBDA_RANGE

    parser.add_argument("--preset", choices=("fast", "paper"), default="fast")
    parser.add_argument("--iterations", type=_number("iterations", int),
                        help="training iterations, 1..10000000 (overrides the preset)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=_number("seed", int), default=0, help="random seed, 0..4294967295")
    parser.add_argument("--threads", type=_number("threads", int),
                        help="CPU threads, 1..256 (default: min(4, CPU count)); a seeded run gives the same output "
                             "at the same thread count")
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
    """Progress on stderr: one tqdm bar per stage, or one strict JSON object per line (warnings too)."""

    def __init__(self, style: str) -> None:
        self.style, self.bar, self.stage = style, None, None

    def __call__(self, progress: Progress) -> None:
        if self.style == "json":
            _json_line(progress.as_dict())
        elif self.style == "bar":
            try:
                from tqdm import tqdm
            except ImportError:  # e.g. Slicer's Python ships no tqdm: one plain line per stage and tenth
                self._plain_line(progress)
                return

            if progress.stage != self.stage:
                self.close()
                self.stage = progress.stage
                self.bar = tqdm(total=1000, desc=progress.stage, file=sys.stderr, leave=True,
                                bar_format="{desc:<12}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
            self.bar.set_postfix_str(progress.message[:90], refresh=False)
            self.bar.update(int(round(progress.fraction * 1000)) - self.bar.n)  # redraws at most every 0.1 s

    def _plain_line(self, progress: Progress) -> None:
        tenth = (progress.stage, int(progress.fraction * 10))
        if tenth != self.stage:
            self.stage = tenth
            sys.stderr.write(f"{progress.stage}: {100 * progress.fraction:3.0f}% {progress.message[:90]}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _json_line(event: dict) -> None:
    """One standard JSON object on stderr: NaN and infinities become null."""
    from ..report import strict_json

    sys.stderr.write(json.dumps(strict_json(event), allow_nan=False) + "\n")
    sys.stderr.flush()


_JSON_WARNINGS = {"on": False}  # --progress json: warnings as {"warning": ...} objects in the same stream


def _warn(notes: list[str]) -> None:
    for note in notes:
        if _JSON_WARNINGS["on"]:
            _json_line({"warning": note})
        else:
            sys.stderr.write(f"warning: {note}\n")


def _read_geometry(args):
    from ..core.volume import AXIS_NAMES, read_through_plane_geometry
    from ..io.volumes import read_volume

    volume = read_volume(args.input, args.allow_external_data)
    axis = getattr(args, "axis", None)
    if axis is not None:  # the caller knows the slice axis (the Slicer module passes the one its panel showed)
        volume.slice_axis = AXIS_NAMES.index(axis)
    geometry, notes = read_through_plane_geometry(volume, args.thickness, args.increment, getattr(args, "profile", "box"))
    if axis is not None:
        geometry = dataclasses.replace(geometry, axis_source="user")
    return volume, geometry, volume.extra.get("notes", []) + notes


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
    from ..enhance import EnhanceOptions

    return EnhanceOptions(preset=args.preset, iterations=args.iterations, device=args.device, seed=args.seed,
                          consistency=None if args.consistency is None else args.consistency == "on",
                          consistency_lambda=args.consistency_lambda, allow_non_hu=args.allow_non_hu, force=args.force,
                          target_spacing_mm=getattr(args, "target_spacing", None), threads=args.threads,
                          confidence=bool(getattr(args, "confidence", None)))


def _plan_outputs(args, output: str, report_folder: Optional[str]):
    """Check every output path of an enhance run before any work (publish.OutputPlan)."""
    from ..io.publish import OutputPlan
    from ..report import REPORT_FILES
    from ..io.volumes import OUTPUT_SUFFIXES

    plan = OutputPlan(Path(args.input) if getattr(args, "input", None) else None, args.overwrite)
    if getattr(args, "dicom", False):
        plan.protect_folder("-o", output)  # the DICOM series folder: checked by check_enhance_outputs
    else:
        plan.add("-o", output, OUTPUT_SUFFIXES)
    if getattr(args, "confidence", None):
        plan.add("--confidence", args.confidence, OUTPUT_SUFFIXES)
    if getattr(args, "save_model", None):
        plan.add("--save-model", args.save_model)
    if report_folder:
        plan.add_folder("--report", report_folder, REPORT_FILES)
    _warn(plan.notes)
    return plan


def _check_space(plan, volume, geometry, args) -> None:
    """Refuse before training when the outputs (volume, model, report) would not fit on their disks."""
    from ..enhance import check_target_spacing
    from ..core.memory import fine_grid_size
    from ..core.networks import build_network, parameter_count
    from ..core.training import preset

    grid = min(geometry.in_plane_spacing_mm)
    target = check_target_spacing(getattr(args, "target_spacing", None), grid, geometry.acquisition.increment_mm)
    shape = volume.array.shape
    plane = int(np.prod(shape)) // shape[geometry.array_axis]
    slices = fine_grid_size(shape[geometry.array_axis], geometry.acquisition.increment_mm, target)
    config = preset(args.preset)
    model_bytes = 4 * parameter_count(build_network(config.architecture, config.network_options)) + 2**20
    plan.check_space({"-o": slices * plane * max(4, volume.array.itemsize) + 2**20, "--save-model": model_bytes,
                      "--report": 8 * 2**20})


def _stage_all(publication, volume, geometry, result, output: Path, args, report_folder: Optional[str]) -> None:
    """Stage and verify every file artefact; a DICOM series is written last, into its own verified staging folder."""
    from ..report import stage_report
    from ..io.volumes import stage_volume

    if not getattr(args, "dicom", False):
        stage_volume(publication, result.volume, output)
    if getattr(args, "confidence", None):
        stage_volume(publication, result.confidence, Path(args.confidence))
    if getattr(args, "save_model", None):
        result.model.stage(publication, Path(args.save_model))
    if report_folder:
        stage_report(publication, Path(report_folder), volume, geometry, result.volume, result.metrics,
                     result.confidence)
    if getattr(args, "dicom", False):
        write_dicom_result(result, geometry, output, args)


def _run_enhance(volume, geometry, notes, output: Path, args, report_folder: Optional[str], plan, model=None) -> dict:
    from ..enhance import enhance
    from ..io.publish import Publication

    _warn(notes)
    printer = _ProgressPrinter(args.progress)
    publication = Publication(plan)
    try:
        result = enhance(volume, geometry, _run_options(args), model=model, reporter=Reporter(printer))
        printer.close()
        _stage_all(publication, volume, geometry, result, output, args, report_folder)
        publication.publish()
        if args.progress == "json":  # the last line: the figures, for the Slicer module's panel
            summary = {k: v for k, v in result.metrics.items() if k != "training"}
            summary["training"] = {k: v for k, v in result.metrics["training"].items() if k not in ("history", "config")}
            printer(Progress("done", 1.0, "finished", summary))
    except BaseException:
        printer.close()
        publication.discard()
        raise
    return result.metrics


def _print_summary(metrics: dict, output: Path) -> None:
    training = metrics.get("training", {})
    line = f"wrote {output} ({' x '.join(map(str, metrics['output_shape']))})"
    if "validation_psnr_db" in training:
        line += (f"; held-out in-plane stand-in PSNR {training['validation_psnr_db']:.2f} dB, "
                 f"linear interpolation {training['validation_linear_psnr_db']:.2f} dB")
    elif "reused_model" in training:
        line += f"; model reused from {training['reused_model']} (no validation on this scan)"
    timings = metrics["timings"]
    line += f"; {timings['total_s']:.0f} s on {metrics['device']}"
    print(line)


def _enhance(args) -> int:
    from ..enhance import TrainedModel

    output = check_enhance_outputs(args)
    plan = _plan_outputs(args, output, args.report)
    model = TrainedModel.load(args.model) if args.model else None
    volume, geometry, notes = _read_geometry(args)
    _check_space(plan, volume, geometry, args)
    metrics = _run_enhance(volume, geometry, notes, output, args, args.report, plan, model)
    _print_summary(metrics, output)
    return send_result(output, args)


def _simulate(args) -> int:
    from ..enhance import to_output_type
    from ..core.forward import simulate_thick_slices
    from ..io.publish import OutputPlan, Publication
    from ..core.volume import AXIS_NAMES, Volume, check_orthogonal, check_volume_shape
    from ..io.volumes import OUTPUT_SUFFIXES, read_volume, stage_volume

    plan = OutputPlan(Path(args.input), args.overwrite)
    output = plan.add("-o", args.output, OUTPUT_SUFFIXES)
    _warn(plan.notes)
    acquisition = Acquisition(args.thickness, args.increment, args.profile)
    volume = read_volume(args.input, args.allow_external_data)
    _warn(volume.extra.get("notes", []))
    check_volume_shape(volume.array)
    check_orthogonal(volume)
    axis = AXIS_NAMES.index(args.axis) if args.axis else (volume.slice_axis if volume.slice_axis is not None else 2)
    spacing = float(volume.spacing[axis])
    if args.increment < spacing:
        raise InputError(f"increment {args.increment:g} mm is finer than the input's slice spacing {spacing:g} mm; "
                         "simulate from a thinner-slice volume")
    plan.check_space({"-o": volume.array.nbytes})
    thick = to_output_type(simulate_thick_slices(volume.array, 2 - axis, spacing, acquisition), volume.array.dtype)
    matrix = volume.ijk_to_world.copy()
    matrix[:3, axis] = volume.directions[:, axis] * args.increment
    publication = Publication(plan)
    try:
        stage_volume(publication, Volume(thick, matrix), output)
        publication.publish()
    except BaseException:
        publication.discard()
        raise
    print(f"wrote {output}: {thick.shape[2 - axis]} slices, {acquisition.describe()}")
    return 0


def _demo(args) -> int:
    from ..sample import load_sample, sample_info
    from ..core.volume import read_through_plane_geometry

    folder = Path(args.out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder} is a file; give a folder for the demo's outputs")
    folder.mkdir(parents=True, exist_ok=True)
    args.overwrite, args.save_model, args.input = True, None, None  # the demo refreshes its own folder
    output = folder / "enhanced.nrrd"
    plan = _plan_outputs(args, str(output), str(folder))
    volume = load_sample()
    geometry, notes = read_through_plane_geometry(volume)
    print(f"SR4ZCT demo: {sample_info()['description']}", file=sys.stderr)
    metrics = _run_enhance(volume, geometry, notes, output, args, str(folder), plan)
    _print_summary(metrics, output)
    print(f"report: {folder / 'report.png'}, metrics: {folder / 'metrics.json'}")
    return 0


def _raise_cancelled(signum, frame) -> None:
    raise Cancelled("terminated")


CANCEL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `sr4zct`; returns the exit code (0, 2 on bad input, 130 when cancelled)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed as one `error:` line
        return int(exit_request.code or 0)
    previous: dict = {}
    for number in CANCEL_SIGNALS:  # terminal closed (SIGHUP) or kill: cancel like Ctrl-C
        try:
            previous[number] = signal.signal(number, _raise_cancelled)
        except ValueError:  # not the main thread (e.g. called from a test runner thread)
            pass
    _JSON_WARNINGS["on"] = getattr(args, "progress", None) == "json"
    warnings.showwarning = lambda message, *rest, **kw: _warn([str(message)])
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except (InputError, ResourceError) as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_ERROR
    except (KeyboardInterrupt, Cancelled):
        sys.stderr.write("cancelled: nothing was written\n")
        return EXIT_CANCELLED
    except BrokenPipeError:  # the reader went away (`sr4zct info --json X | head -1`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
