"""`sr4zct enhance` options for the clinic: DICOM output, sending to a PACS, the confidence map.

Everything is checked before the long work starts; the results are written (and verified) only
after a successful run, and a failed send keeps the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError


def add_enhance_arguments(parser: argparse.ArgumentParser) -> None:
    """--format, --dicom-template, --send, --calling-aet, --confidence."""
    from ..io.send import DEFAULT_CALLING_AET

    parser.add_argument("--format", choices=("volume", "dicom"),
                        help="output as one volume file or as a DICOM series folder (default: by the output name; "
                             "a folder, or a name without a suffix, is a DICOM series)")
    parser.add_argument("--dicom-template", metavar="DIR",
                        help="DICOM series giving patient and study for DICOM output from a non-DICOM input")
    parser.add_argument("--send", metavar="AET@HOST:PORT", help="after a successful run, send the DICOM output there")
    parser.add_argument("--calling-aet", default=DEFAULT_CALLING_AET, help="our AE title for --send")
    parser.add_argument("--confidence", metavar="OUT",
                        help="also write the coronal/sagittal disagreement map (HU) here (.nrrd, .nii.gz or .mha)")


def check_enhance_outputs(args) -> Path:
    """Check a DICOM output folder, the template and the destination; returns the output.

    File outputs (-o as a volume file, --confidence, --save-model, --report) are checked by publish.OutputPlan.
    """
    from ..io.dicom_write import check_dicom_output, is_dicom_output, source_for
    from ..io.send import check_calling_aet, parse_destination

    args.dicom = is_dicom_output(args.output, args.format)
    if args.dicom:
        output = check_dicom_output(args.output, [args.input], args.overwrite)
        args.dicom_source = source_for(args.input, args.dicom_template)
    elif args.dicom_template:
        raise InputError("--dicom-template is for DICOM output; give an output folder or --format dicom")
    else:
        output = Path(args.output)
    if args.send:
        if not args.dicom:
            raise InputError("--send needs DICOM output; give an output folder (or --format dicom)")
        args.destination = parse_destination(args.send)
        check_calling_aet(args.calling_aet)
    return output


def write_dicom_result(result, geometry, output: Path, args) -> Path:
    """The enhanced volume as a verified DICOM series folder (file outputs are staged by the caller's publication)."""
    from ..io.dicom_write import write_dicom_series

    return write_dicom_series(result.volume, geometry.axis, output, args.dicom_source, Path(args.input).name,
                              overwrite=args.overwrite)


def send_result(output: Path, args) -> int:
    """Send the published DICOM output when --send was given; the files stay whatever happens."""
    from ..io.send import SendError, send_series

    if not getattr(args, "send", None):
        return 0
    try:
        count = send_series(output, args.destination, args.calling_aet)
    except SendError as error:
        raise SendError(f"{error} (the series stays in {output}; send it later with `sr4zct send {output} --to ...`)")
    print(f"sent {count} files to {args.destination}")
    return 0
