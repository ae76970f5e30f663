"""`sr4zct info` (a volume's through-plane geometry) and `sr4zct simulate` (thick slices by the forward model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import __version__
from ..core.acquisition import Acquisition
from ..errors import InputError
from ..options import PROFILES
from ..progress import Progress, Reporter
from .common import Console, add_options, add_progress, add_volume_input, run_options
from .enhance import read_geometry


def register_info(commands) -> None:
    """Add `info`."""
    info = commands.add_parser("info", help="show geometry, increment, thickness and overlap of a volume")
    add_volume_input(info)
    add_options(info, ("thickness_mm", "increment_mm"),
                thickness_mm={"help": "slice thickness in mm (overrides DICOM)"},
                increment_mm={"help": "slice increment in mm (overrides the geometry)"})
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--estimate-profile", action="store_true",
                      help="also estimate the slice profile (FWHM, FWTM, family) and the noise from the voxels")
    info.set_defaults(handler=run_info)


def register_simulate(commands) -> None:
    """Add `simulate`."""
    simulate = commands.add_parser("simulate", help="make thick slices from a thin-slice volume (forward model)")
    add_volume_input(simulate)
    simulate.add_argument("-o", "--output", required=True)
    add_options(simulate, ("thickness_mm", "increment_mm", "profile"),
                thickness_mm={"required": True, "help": "slice thickness (FWHM) in mm"},
                increment_mm={"required": True, "help": "slice increment in mm"},
                profile={"default": "box", "choices": PROFILES,
                         "help": "slice profile: box, gaussian or blurred-box (FWTM 1.7 x FWHM); default box; recorded "
                                 "in the output's header"})
    simulate.add_argument("--axis", choices=("i", "j", "k"),
                          help="axis to make thick (default: the DICOM stacking axis, else k)")
    simulate.add_argument("--overwrite", action="store_true")
    add_progress(simulate)
    simulate.set_defaults(handler=run_simulate)


def run_info(args: argparse.Namespace, console: Console) -> int:
    volume, geometry, notes = read_geometry(Path(args.input), run_options(args),
                                            allow_external_data=args.allow_external_data)
    console.warn(notes)
    summary = geometry.as_dict(volume)
    if args.estimate_profile:
        summary["slice_profile"] = estimate_profile(volume, geometry).as_dict()
    if args.json:
        summary["sr4zct_version"] = __version__
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:28s} {value}")
    return 0


def estimate_profile(volume, geometry):
    """The slice profile the voxels show (core/slice_profile.py), the nominal thickness as the search's centre."""
    import numpy as np

    from ..core.slice_profile import estimate_slice_profile

    stack = np.moveaxis(volume.array, geometry.array_axis, 0)
    return estimate_slice_profile(stack, min(geometry.in_plane_spacing_mm), geometry.acquisition.increment_mm,
                                  geometry.acquisition.thickness_mm)


def run_simulate(args: argparse.Namespace, console: Console) -> int:
    from ..core.forward import simulate_thick_slices
    from ..core.volume import AXIS_NAMES, Volume, check_orthogonal, check_volume_shape
    from ..enhance import to_output_type
    from ..io.publish import OutputPlan, write_planned
    from ..io.volumes import OUTPUT_SUFFIXES, read_volume, stage_volume

    plan = OutputPlan(Path(args.input), args.overwrite)
    output = plan.add("-o", args.output, OUTPUT_SUFFIXES)
    console.warn(plan.notes)
    acquisition = Acquisition(args.thickness_mm, args.increment_mm, args.profile)
    volume = read_volume(args.input, args.allow_external_data)
    console.warn(volume.extra.get("notes", []))
    check_volume_shape(volume.array)
    check_orthogonal(volume)
    axis = AXIS_NAMES.index(args.axis) if args.axis else (volume.slice_axis if volume.slice_axis is not None else 2)
    spacing = float(volume.spacing[axis])
    if args.increment_mm < spacing:
        raise InputError(f"increment {args.increment_mm:g} mm is finer than the input's slice spacing {spacing:g} mm; "
                         "simulate from a thinner-slice volume")
    plan.check_space({"-o": volume.array.nbytes})
    try:
        thick = simulate_thick_slices(volume.array, 2 - axis, spacing, acquisition, Reporter(console))
    finally:
        console.close()
    thick = to_output_type(thick, volume.array.dtype)
    matrix = volume.ijk_to_world.copy()
    matrix[:3, axis] = volume.directions[:, axis] * args.increment_mm
    result = Volume(thick, matrix, recorded_acquisition=acquisition)  # the header says how it was made
    write_planned(plan, lambda publication: stage_volume(publication, result, output))
    if args.progress == "json":
        console(Progress("done", 1.0, "finished", {"output": str(output), "acquisition": acquisition.describe(),
                                                   "sr4zct_version": __version__}))
    print(f"wrote {output}: {thick.shape[2 - axis]} slices, {acquisition.describe()}")
    return 0
