"""`sr4zct enhance` and `sr4zct demo`: one volume, checked first, enhanced, published together; DICOM out and send.

Every output path is checked before any work; the outputs are staged, verified and published together at the
end (io/publish.py), a DICOM series folder with them; a failed send keeps the files.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import Cancelled, InputError
from ..options import RunOptions
from ..progress import Progress, Reporter
from .common import ACQUISITION, TRAINING, Console, add_options, add_progress, add_volume_input, run_options


@dataclass(frozen=True)
class DicomTarget:
    """A DICOM series output: the series it copies patient and study from, and the input's name it records."""

    source: object  # io.dicom_write.SourceSeries
    input_name: str


@dataclass(frozen=True)
class SendTarget:
    """Where --send delivers the published DICOM series."""

    destination: object  # io.send.Destination
    calling_aet: str


@dataclass(frozen=True)
class EnhanceCommand:
    """One `enhance` (or `demo`) run as typed values, every path checked."""

    input: Optional[Path]  # None: the bundled sample (demo)
    output: Path
    options: RunOptions
    progress: str = "bar"
    report: Optional[Path] = None
    confidence: Optional[Path] = None
    overwrite: bool = False
    axis: Optional[str] = None
    allow_external_data: bool = False
    dicom: Optional[DicomTarget] = None
    send: Optional[SendTarget] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EnhanceCommand":
        """Check the DICOM output folder, the template and the destination (file outputs: see plan_outputs)."""
        from ..io.dicom import source_for
        from ..io.dicom_write import check_dicom_output, is_dicom_output
        from ..io.send import check_calling_aet, parse_destination

        dicom = None
        if is_dicom_output(args.output, args.format):
            inputs = [args.input] + [p for p in (args.dicom_template, args.model_path) if p]
            output = check_dicom_output(args.output, inputs, args.overwrite)
            dicom = DicomTarget(source_for(args.input, args.dicom_template), Path(args.input).name)
        elif args.dicom_template:
            raise InputError("--dicom-template is for DICOM output; give an output folder or --format dicom")
        else:
            output = Path(args.output)
        send = None
        if args.send:
            if dicom is None:
                raise InputError("--send needs DICOM output; give an output folder (or --format dicom)")
            send = SendTarget(parse_destination(args.send), check_calling_aet(args.calling_aet))
        return cls(Path(args.input), output, run_options(args, confidence=bool(args.confidence)), args.progress,
                   Path(args.report) if args.report else None, Path(args.confidence) if args.confidence else None,
                   args.overwrite, args.axis, args.allow_external_data, dicom, send)


def register_enhance(commands) -> None:
    """Add `enhance`."""
    from ..io.send import DEFAULT_CALLING_AET

    enhance = commands.add_parser("enhance", help="enhance a thick-slice CT volume")
    add_volume_input(enhance)
    enhance.add_argument("-o", "--output", required=True,
                         help="output volume (.nrrd, .nii, .nii.gz or .mha), or a folder for a DICOM series")
    add_options(enhance, ACQUISITION + TRAINING)
    add_progress(enhance)
    add_options(enhance, ("target_spacing_mm",))
    enhance.add_argument("--axis", choices=("i", "j", "k"),
                         help="through-plane voxel axis (default: the DICOM slice normal, else the coarsest spacing)")
    add_options(enhance, ("save_model_path", "model_path"))
    enhance.add_argument("--report", help="folder for report.png and metrics.json")
    enhance.add_argument("--overwrite", action="store_true", help="replace an existing output")
    enhance.add_argument("--format", choices=("volume", "dicom"),
                         help="output as one volume file or as a DICOM series folder (default: by the output name; "
                              "a folder, or a name without a suffix, is a DICOM series)")
    enhance.add_argument("--dicom-template", metavar="DIR",
                         help="DICOM series giving patient and study for DICOM output from a non-DICOM input")
    enhance.add_argument("--send", metavar="AET@HOST:PORT", help="after a successful run, send the DICOM output there")
    enhance.add_argument("--calling-aet", default=DEFAULT_CALLING_AET, help="our AE title for --send")
    enhance.add_argument("--confidence", metavar="OUT",
                         help="also write the coronal/sagittal disagreement map (HU) here (.nrrd, .nii.gz or .mha)")
    enhance.set_defaults(handler=run_enhance_command)


def register_demo(commands) -> None:
    """Add `demo`."""
    demo = commands.add_parser("demo", help="enhance the bundled 5 mm chest CT sample")
    demo.add_argument("--out", default="sr4zct-demo", help="folder for enhanced.nrrd, report.png, metrics.json")
    add_options(demo, TRAINING)
    add_progress(demo)
    demo.set_defaults(handler=run_demo)


def read_geometry(path: Path, options: RunOptions, axis: Optional[str] = None, allow_external_data: bool = False):
    """The volume, its through-plane geometry (the given axis, when the caller knows it) and the notes to show."""
    from ..core.volume import AXIS_NAMES, read_through_plane_geometry
    from ..io.volumes import read_volume

    volume = read_volume(path, allow_external_data)
    crossing = []
    if axis is not None:  # the caller knows the slice axis (the Slicer module passes the one its panel showed)
        crossing = _across_dicom_slices(volume, axis, options)
        volume.slice_axis = AXIS_NAMES.index(axis)
    geometry, notes = read_through_plane_geometry(volume, options.thickness_mm, options.increment_mm, options.profile)
    if axis is not None:
        geometry = dataclasses.replace(geometry, axis_source="user")
    return volume, geometry, volume.extra.get("notes", []) + crossing + notes


def _across_dicom_slices(volume, axis: str, options: RunOptions) -> list[str]:
    """--axis across a DICOM series' stacking axis: its SliceThickness describes another direction, so --thickness
    is required (and the series' own thickness is not used); the warning to show."""
    from ..core.volume import AXIS_NAMES

    stacked = volume.slice_axis if volume.source == "dicom" else None
    if stacked is None or AXIS_NAMES.index(axis) == stacked:
        return []
    if options.thickness_mm is None:
        raise InputError(f"--axis {axis} crosses the DICOM slices (stacked along {AXIS_NAMES[stacked]}): the series' "
                         f"SliceThickness describes {AXIS_NAMES[stacked]}, not {axis}; give --thickness (and --increment) "
                         f"for the {axis} direction, or leave --axis out")
    volume.slice_thickness_mm = None  # never applied along another axis
    return [f"--axis {axis} crosses the DICOM slices (stacked along {AXIS_NAMES[stacked]}); using --thickness "
            f"{options.thickness_mm:g} mm for {axis}, not the series' SliceThickness"]


def plan_outputs(command: EnhanceCommand, console: Console):
    """Check every output path of an enhance run before any work (io.publish.OutputPlan)."""
    from ..io.publish import OutputPlan
    from ..io.volumes import OUTPUT_SUFFIXES
    from ..report import REPORT_FILES

    plan = OutputPlan(command.input, command.overwrite)
    if command.dicom is not None:
        plan.protect_folder("-o", command.output)  # the DICOM series folder: checked by EnhanceCommand.from_args
    else:
        plan.add("-o", command.output, OUTPUT_SUFFIXES)
    if command.confidence is not None:
        plan.add("--confidence", command.confidence, OUTPUT_SUFFIXES)
    if command.options.save_model_path:
        plan.add("--save-model", command.options.save_model_path)
    if command.report is not None:
        plan.add_folder("--report", command.report, REPORT_FILES)
    console.warn(plan.notes)
    return plan


def check_space(plan, volume, geometry, options: RunOptions) -> None:
    """Refuse before training when the outputs (volume, model, report) would not fit on their disks."""
    from ..core.memory import fine_grid_size
    from ..core.networks import build_network, parameter_count
    from ..core.training import preset
    from ..enhance import check_target_spacing

    grid = min(geometry.in_plane_spacing_mm)
    target = check_target_spacing(options.target_spacing_mm, grid, geometry.acquisition.increment_mm)
    shape = volume.array.shape
    plane = int(np.prod(shape)) // shape[geometry.array_axis]
    slices = fine_grid_size(shape[geometry.array_axis], geometry.acquisition.increment_mm, target)
    config = preset(options.preset)
    model_bytes = 4 * parameter_count(build_network(config.architecture, config.network_options)) + 2**20
    plan.check_space({"-o": slices * plane * max(4, volume.array.itemsize) + 2**20, "--save-model": model_bytes,
                      "--report": 8 * 2**20})


def stage_all(publication, command: EnhanceCommand, volume, geometry, result) -> None:
    """Stage and verify every artefact (a DICOM series as a staging folder); publish() then places them all or none."""
    from ..io.dicom_write import stage_dicom_series
    from ..io.volumes import stage_volume
    from ..report import stage_report

    if command.dicom is None:
        stage_volume(publication, result.volume, command.output)
    if command.confidence is not None:
        stage_volume(publication, result.confidence, command.confidence)
    if command.options.save_model_path:
        result.model.stage(publication, Path(command.options.save_model_path))
    if command.report is not None:
        stage_report(publication, command.report, volume, result.geometry or geometry, result.volume, result.metrics,
                     result.confidence)
    if command.dicom is not None:
        stage_dicom_series(publication, result.volume, geometry.axis, command.output, command.dicom.source,
                           command.dicom.input_name)


def run(command: EnhanceCommand, console: Console, volume, geometry, notes, plan, model=None):
    """Enhance, stage and publish every output together; returns the run's metrics."""
    from ..enhance import enhance
    from ..io.publish import Publication

    console.warn(notes)
    publication = Publication(plan)
    try:
        result = enhance(volume, geometry, command.options, model=model, reporter=Reporter(console))
        console.close()
        stage_all(publication, command, volume, geometry, result)
        publication.publish()
        if command.progress == "json":  # the last line: the figures, for the Slicer module's panel
            console(Progress("done", 1.0, "finished", result.metrics.summary()))
    except BaseException:
        console.close()
        publication.discard()
        raise
    return result.metrics


def run_enhance_command(args: argparse.Namespace, console: Console) -> int:
    from ..model import TrainedModel

    command = EnhanceCommand.from_args(args)
    plan = plan_outputs(command, console)
    model = TrainedModel.load(command.options.model_path) if command.options.model_path else None
    volume, geometry, notes = read_geometry(command.input, command.options, command.axis, command.allow_external_data)
    if command.dicom is not None and geometry.axis != 2 and not command.dicom.source.is_template:
        raise InputError(f"--axis {command.axis} crosses the DICOM slices: a derived series of images in another "
                         "orientation than the source's cannot reference its slices; write a volume file (-o X.nrrd) "
                         "or leave --axis out")
    check_space(plan, volume, geometry, command.options)
    metrics = run(command, console, volume, geometry, notes, plan, model)
    print(metrics.describe(str(command.output)))
    if command.send is not None:
        send_result(command.output, command.send)
    return 0


def send_result(output: Path, target: SendTarget) -> None:
    """Send the published DICOM output; the files stay whatever happens."""
    from ..io.send import SendError, send_series

    sent = [0]
    try:
        count = send_series(output, target.destination, target.calling_aet,
                            on_file=lambda done, total: sent.__setitem__(0, done))
    except SendError as error:
        raise SendError(f"{error} (the series stays in {output}; send it later with `sr4zct send {output} --to ...`)")
    except (KeyboardInterrupt, Cancelled):
        raise Cancelled("terminated", kept=f"the series was written and stays in {output}; its sending to "
                        f"{target.destination} was stopped after {sent[0]} files: send it later with "
                        f"`sr4zct send {output} --to {target.destination}`") from None
    print(f"sent {count} files to {target.destination}")


def run_demo(args: argparse.Namespace, console: Console) -> int:
    from ..core.volume import read_through_plane_geometry
    from ..sample import load_sample, sample_info

    folder = Path(args.out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder} is a file; give a folder for the demo's outputs")
    folder.mkdir(parents=True, exist_ok=True)
    command = EnhanceCommand(None, folder / "enhanced.nrrd", run_options(args), args.progress, report=folder,
                             overwrite=True)  # the demo refreshes its own folder
    plan = plan_outputs(command, console)
    volume = load_sample()
    geometry, notes = read_through_plane_geometry(volume)
    print(f"SR4ZCT demo: {sample_info()['description']}", file=sys.stderr)
    metrics = run(command, console, volume, geometry, notes, plan)
    print(metrics.describe(str(command.output)))
    print(f"report: {folder / 'report.png'}, metrics: {folder / 'metrics.json'}")
    return 0
