"""`sr4zct batch MANIFEST.csv --out DIR`: every series of a manifest on Dask (batch.py), resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import ACQUISITION, TRAINING, Console, add_options, add_progress, run_options


def register(commands) -> None:
    """Add `batch` with the options `enhance` has (blank manifest cells take --thickness/--increment)."""
    batch = commands.add_parser("batch", help="enhance every series of a CSV manifest on Dask (resumable)")
    batch.add_argument("manifest", help="CSV with a header: input,thickness,increment,output")
    batch.add_argument("--out", required=True, help="folder for NAME.nrrd, NAME.metrics.json and the summary")
    batch.add_argument("--workers", type=int, default=1, help="local Dask workers (default 1; with GPUs, one per GPU)")
    batch.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://head:8786")
    add_options(batch, ("target_spacing_mm",), target_spacing_mm={"help": "output slice spacing in mm (default: in-plane)"})
    add_options(batch, ACQUISITION + TRAINING)
    add_progress(batch)
    batch.set_defaults(handler=run_batch_command)


def run_batch_command(args: argparse.Namespace, console: Console) -> int:
    from ..batch import read_manifest, run_batch, write_summary

    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: give at least 1")
    series = read_manifest(args.manifest)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    if not out.resolve().parent.is_dir():
        raise InputError(f"the parent of --out {out} does not exist; create it first")
    from ..io.publish import input_overlap

    for item in series:
        if input_overlap(out / f"{item.name}.nrrd", item.input) in ("is", "inside"):
            raise InputError(f"manifest line {item.row}: the output would be written into the input {item.input}; "
                             "choose another --out")
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        rows = run_batch(series, out, run_options(args), args.workers, args.scheduler, args.progress)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    csv_path, _ = write_summary(out, rows)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("done", "skipped", "failed")}
    print(f"{counts['done']} enhanced, {counts['skipped']} already done, {counts['failed']} failed; summary: {csv_path}")
    if counts["failed"]:
        first = next(r for r in rows if r["status"] == "failed")
        raise InputError(f"{counts['failed']} of {len(rows)} series failed (first: {first['name']}: {first['error']}); "
                         f"see {csv_path}")
    return 0
