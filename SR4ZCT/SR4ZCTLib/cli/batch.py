"""`sr4zct batch MANIFEST.csv --out DIR`: every series of a manifest on Dask (batch.py), resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import ACQUISITION, TRAINING, Console, add_options, add_progress, run_options


MAX_WORKERS = 256


def check_workers(workers: int) -> int:
    """--workers within 1..MAX_WORKERS."""
    if not 1 <= workers <= MAX_WORKERS:
        raise InputError(f"--workers {workers} is outside its range 1..{MAX_WORKERS}; give a value in it")
    return workers


def check_out_folder(out: Path) -> None:
    """--out a folder, or creatable: its parent exists and is writable (the folder too, when it exists)."""
    import os

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    folder = out if out.is_dir() else out.resolve().parent
    if not folder.is_dir():
        raise InputError(f"the parent of --out {out} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{'--out' if folder == out else 'the parent of --out'} {folder} is not writable; choose "
                         "another --out")


def register(commands) -> None:
    """Add `batch` with the options `enhance` has (blank manifest cells take --thickness/--increment)."""
    batch = commands.add_parser("batch", help="enhance every series of a CSV manifest on Dask (resumable)")
    batch.add_argument("manifest", help="CSV with a header: input,thickness,increment,output")
    batch.add_argument("--out", required=True, help="folder for NAME.nrrd, NAME.metrics.json and the summary")
    batch.add_argument("--workers", type=int, default=1,
                       help=f"local Dask workers, 1 to {MAX_WORKERS} (default 1; at most one per series left, with "
                            "GPUs one per GPU)")
    batch.add_argument("--overwrite", action="store_true",
                       help="replace existing NAME.nrrd/NAME.metrics.json in --out that an earlier batch did not write")
    batch.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://head:8786")
    add_options(batch, ("target_spacing_mm",), target_spacing_mm={"help": "output slice spacing in mm (default: in-plane)"})
    add_options(batch, ACQUISITION + TRAINING)
    add_progress(batch)
    batch.set_defaults(handler=run_batch_command)


def run_batch_command(args: argparse.Namespace, console: Console) -> int:
    from ..batch import LOCK_NAME, check_outputs, read_manifest, run_batch, write_summary
    from ..io.publish import FolderLock

    workers = check_workers(args.workers)
    if args.scheduler is not None and not args.scheduler.strip():
        raise InputError("--scheduler is empty; give a Dask scheduler address, e.g. tcp://head:8786, or leave it out "
                         "for a local cluster")
    series = read_manifest(args.manifest)
    out = Path(args.out)
    check_out_folder(out)
    options = run_options(args).checked()  # the ranges `enhance` has, before any cluster starts
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        with FolderLock(out / LOCK_NAME, "sr4zct batch") as lock:  # one batch per --out at a time
            console.warn(lock.notes)
            check_outputs(series, out, Path(args.manifest), args.overwrite)
            rows = run_batch(series, out, options, workers, args.scheduler, args.progress, args.overwrite)
            csv_path, _ = write_summary(out, rows)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    counts = {status: sum(r["status"] == status for r in rows) for status in ("done", "skipped", "failed")}
    print(f"{counts['done']} enhanced, {counts['skipped']} already done, {counts['failed']} failed; summary: {csv_path}")
    if counts["failed"]:
        first = next(r for r in rows if r["status"] == "failed")
        raise InputError(f"{counts['failed']} of {len(rows)} series failed (first: {first['name']}: {first['error']}); "
                         f"see {csv_path}")
    return 0
