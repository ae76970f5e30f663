"""`sr4zct batch`: enhance a cohort, one series per task, on Dask (a local cluster or an existing scheduler).

Manifest: a CSV with a header; columns `input` (required), `thickness`, `increment`, `output` (a
name, default the input's); blank thickness/increment cells take --thickness/--increment, then the
series' own DICOM SliceThickness and slice positions, as `enhance` does. Each row becomes one task that writes OUT/NAME.nrrd and
OUT/NAME.metrics.json (atomically); a row whose output and metrics exist with the same options
is skipped, so an interrupted batch resumes. A bad series fails alone: its error goes to the
summary and the other tasks go on. GPUs are Dask worker resources: a task on CUDA asks for
{"GPU": 1}, so each GPU runs one task at a time. Summary: OUT/summary.csv and OUT/summary.json.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from .errors import Cancelled, InputError
from .options import RunOptions, flagged_fields

ROW_OPTIONS = {f.metadata["option"].column: f.name for f in flagged_fields() if f.metadata["option"].column}
COLUMNS = ("input", *ROW_OPTIONS, "output")  # input,thickness,increment,output
HEADER = ",".join(COLUMNS)

SUMMARY_FILES = ("summary.csv", "summary.json")
LOCK_NAME = ".sr4zct-batch.lock"  # held while a batch writes to its --out folder (io/publish.FolderLock)
SUMMARY_FIELDS = ("name", "input", "status", "seconds", "validation_psnr_db", "validation_linear_psnr_db", "output",
                  "error")
SAFE_NAME = re.compile(r"^\w(?:[\w .+-]{0,126}[\w.+-])?$")  # letters of any script, digits, inner spaces, . _ + -
WARNINGS = "warnings"  # a task's Python warnings, returned with its summary row (not a summary column)
GPU = "GPU"  # the Dask worker resource a CUDA task asks for
SCHEDULER_TIMEOUT = "30s"


@dataclass(frozen=True)
class Series:
    """One manifest row."""

    row: int
    input: str
    name: str
    thickness_mm: Optional[float]
    increment_mm: Optional[float]


def read_manifest(path: str | os.PathLike) -> list[Series]:
    """Parse and check the manifest (columns, numbers, unique safe names); relative inputs are from its folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist; give a CSV with a header row: {HEADER}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, row) for row in reader]  # the line each row ends on (blank lines counted)
            fields = [f.strip() for f in (reader.fieldnames or [])]
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise InputError(f"manifest {path.name}, line {line}: not UTF-8 text (a spreadsheet's Latin-1 export?); save "
                         "it as CSV UTF-8") from None
    if "input" not in fields:
        raise InputError(f"manifest {path.name} has no `input` column; the first line must be a header, e.g. "
                         f"{HEADER}")
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise InputError(f"manifest {path.name}: unknown column(s) {', '.join(sorted(unknown))}; use {HEADER}")
    series, names = [], {}
    for number, row in rows:
        if None in row:  # csv puts cells beyond the header under None
            raise InputError(f"manifest {path.name}, line {number} has more cells than the header ({HEADER}); quote "
                             "a path with a comma in it, or remove the extra cells")
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key}
        if not row.get("input"):
            raise InputError(f"manifest {path.name}, line {number}: empty input; give a file or DICOM folder path")
        source = Path(row["input"])
        source = source if source.is_absolute() else path.resolve().parent / source
        name = row.get("output") or _default_name(source)
        name = name[:-5] if name.endswith(".nrrd") else name
        if not SAFE_NAME.match(name):
            raise InputError(f"manifest {path.name}, line {number}: output name {name!r} must be a plain file name "
                             "(letters, digits, inner spaces, . _ + -)")
        if name in names:
            raise InputError(f"manifest {path.name}, lines {names[name]} and {number} both write {name}; "
                             "give distinct output names")
        names[name] = number
        series.append(Series(number, str(source), name, **{field: _number(row, column, path, number)
                                                            for column, field in ROW_OPTIONS.items()}))
    if not series:
        raise InputError(f"manifest {path.name} lists no series; add one row per series below the header")
    return series


def _default_name(source: Path) -> str:
    from .io.volumes import volume_suffix

    suffix = volume_suffix(source)
    return source.name[: -len(suffix)] if suffix and source.name.lower().endswith(suffix) else source.name


def _number(row: dict, key: str, path: Path, number: int) -> Optional[float]:
    text = row.get(key, "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"manifest {path.name}, line {number}: {key} {text!r} must be a positive number of mm")
    return value


def input_identity(path: str) -> list:
    """Name, size and modification time of every file of the input (a DICOM folder's, a header's data file)."""
    from .io.publish import input_files

    files, _ = input_files(Path(path))
    return [[p.name, s.st_size, s.st_mtime_ns] for p, s in sorted((p, p.stat()) for p in files if p.exists())]


def manifest_inputs(series: list[Series], manifest: Path) -> list[Path]:
    """Every file the batch reads (each row's input files and the manifest): none may be an output."""
    from .io.publish import input_files

    files = [manifest]
    for item in series:
        if Path(item.input).exists():
            found, folder = input_files(Path(item.input))
            files += found + ([folder] if folder is not None else [])
    return files


def own_result(out: Path, series: Series) -> bool:
    """Whether OUT/NAME.metrics.json is a batch result's (so its NAME.nrrd is this tool's to replace)."""
    try:
        return "batch_key" in json.loads(result_paths(out, series)[1].read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_outputs(series: list[Series], out: Path, manifest: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that is any input of the manifest (or the manifest), or that exists and
    is not this tool's own result (unless overwrite)."""
    from .io.publish import input_overlap

    inputs = manifest_inputs(series, manifest)
    outputs = [(item, path) for item in series for path in result_paths(out, item)]
    outputs += [(None, out / name) for name in (*SUMMARY_FILES, LOCK_NAME)]
    for item, path in outputs:
        where = f"manifest line {item.row}: " if item is not None else ""
        for source in inputs:
            if input_overlap(path, source) in ("is", "inside"):
                raise InputError(f"{where}the output {path} would overwrite the input {source} of this batch; "
                                 "choose another --out or another output name")
    for item in series:
        output, metrics = result_paths(out, item)
        foreign = [p for p in (output, metrics) if p.exists()] if not own_result(out, item) else []
        if foreign and not overwrite:
            raise InputError(f"manifest line {item.row}: {foreign[0]} exists and was not written by sr4zct batch (no "
                             f"{metrics.name} of its own); choose another --out or pass --overwrite")


def series_options(series: Series, options: RunOptions) -> RunOptions:
    """The run options of one row: its own thickness and increment where the manifest gives them."""
    return replace(options, thickness_mm=series.thickness_mm or options.thickness_mm,
                   increment_mm=series.increment_mm or options.increment_mm)


def task_key(series: Series, options: RunOptions) -> dict:
    """Everything the stored result must match to be reused."""
    return {"input": series.input, "input_identity": input_identity(series.input) if Path(series.input).exists() else None,
            **{k: v for k, v in series_options(series, options).key().items() if k != "device"}}


def result_paths(out: Path, series: Series) -> tuple[Path, Path]:
    return out / f"{series.name}.nrrd", out / f"{series.name}.metrics.json"


def already_done(out: Path, series: Series, options: RunOptions) -> Optional[dict]:
    """The stored metrics when output and metrics exist with the same options, else None."""
    output, metrics_path = result_paths(out, series)
    if not (output.is_file() and metrics_path.is_file()):
        return None
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if metrics.get("batch_key") == json.loads(json.dumps(task_key(series, options))) else None


def summary_row(series: Series, status: str, out: Optional[Path] = None, training: Optional[dict] = None,
                seconds: float = 0.0, error: str = "") -> dict:
    """One line of summary.csv: the series, what happened, its held-out figures and output (or its error)."""
    training = training or {}
    return {"name": series.name, "input": series.input, "status": status, "seconds": round(seconds, 2),
            "validation_psnr_db": training.get("validation_psnr_db"),
            "validation_linear_psnr_db": training.get("validation_linear_psnr_db"),
            "output": str(result_paths(out, series)[0]) if out is not None else "", "error": error}


def run_series(series: Series, out: str, options: RunOptions, device: str, threads: int, overwrite: bool = False) -> dict:
    """One task (runs on a Dask worker): enhance one series and write its output and metrics; never raises."""
    import warnings

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # sent back to the client, shown as its --progress style
        warnings.simplefilter("default")
        try:
            metrics = _enhance_one(series, Path(out), options, _worker_device(device), threads, overwrite)
            row = summary_row(series, "done", Path(out), metrics.training, time.perf_counter() - started)
        except Exception as error:  # one bad series fails alone, with its message in the summary
            message = str(error) if isinstance(error, InputError) else f"{error.__class__.__name__}: {error}"
            row = summary_row(series, "failed", seconds=time.perf_counter() - started, error=message)
    return row | {WARNINGS: [f"{series.name}: {w.message}" for w in caught]}


def _worker_device(device: str) -> str:
    """On a worker of a local GPU cluster, use the GPU numbered like the worker (one worker per GPU)."""
    if device != "cuda":
        return device
    import torch

    try:
        from distributed import get_worker

        index = int(get_worker().name)
    except (ImportError, ValueError, TypeError):
        index = 0
    if torch.cuda.device_count() > 1:
        torch.cuda.set_device(index % torch.cuda.device_count())
    return device


def _enhance_one(series: Series, out: Path, options: RunOptions, device: str, threads: int, overwrite: bool):
    """Enhance one series and publish OUT/NAME.metrics.json and OUT/NAME.nrrd together; returns the run's metrics.

    An existing result is replaced only when it is this tool's own (its metrics file has a batch key) or with
    overwrite; the metrics file is published first, so an interrupted publication leaves a result still ours."""
    import torch

    from .core.volume import read_through_plane_geometry
    from .enhance import enhance
    from .io.publish import OutputPlan, stage_text, write_planned
    from .io.volumes import read_volume, stage_volume
    from .metrics import strict_json

    torch.set_num_threads(max(1, threads))
    key = task_key(series, options)
    options = replace(series_options(series, options), device=device, threads=max(1, threads))
    volume = read_volume(series.input)
    geometry, notes = read_through_plane_geometry(volume, options.thickness_mm, options.increment_mm, options.profile)
    result = enhance(volume, geometry, options)
    output, metrics_path = result_paths(out, series)
    metrics = result.metrics.with_extra(warnings=notes, batch_key=key)
    plan = OutputPlan(Path(series.input), overwrite or own_result(out, series))
    for path in (metrics_path, output):
        plan.add("--out", path)
    text = json.dumps(strict_json(metrics.stored()), indent=2, allow_nan=False)
    write_planned(plan, lambda publication: (stage_text(publication, metrics_path, text),
                                             stage_volume(publication, result.volume, output)))
    return metrics


def run_batch(series: list[Series], out: Path, options: RunOptions, workers: int = 1, scheduler: Optional[str] = None,
              progress: str = "bar", overwrite: bool = False) -> list[dict]:
    """Skip finished rows, run the rest as Dask tasks, and return one summary row per series (manifest order).

    The options are checked (the ranges `enhance` has) before any cluster starts; local workers are capped to the
    series left to do. Cancelled (SIGTERM, Ctrl-C) raises Cancelled saying which finished series were kept."""
    options.checked()
    summary: dict[int, dict] = {}
    todo = []
    for item in series:
        done = already_done(out, item, options)
        if done is None:
            todo.append(item)
        else:
            summary[item.row] = summary_row(item, "skipped", out, done.get("training"))
    try:
        _run_todo(todo, summary, len(series), out, options, workers, scheduler, progress, overwrite)
    except (KeyboardInterrupt, Cancelled):
        kept = [item.name for item in series if already_done(out, item, options) is not None]
        raise Cancelled("terminated", kept=f"{len(kept)} finished series kept in {out} "
                        f"({', '.join(kept[:5]) + (', ...' if len(kept) > 5 else '') or 'none'}), the unfinished "
                        "ones were not written; run the same command again to resume") from None
    return [summary[item.row] for item in series]


def _run_todo(todo: list[Series], summary: dict[int, dict], total: int, out: Path, options: RunOptions, workers: int,
              scheduler: Optional[str], progress: str, overwrite: bool) -> None:
    """Run the series left to do as Dask tasks on a local cluster (or the given scheduler), filling summary."""
    from distributed import Client, LocalCluster, as_completed

    if todo:
        workers = min(workers, len(todo))
        device = _batch_device(options.device)
        resources = {GPU: 1} if device == "cuda" else None
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
        cluster = None
        if scheduler is None:
            gpus = _gpu_count() if device == "cuda" else 0
            cluster = LocalCluster(n_workers=min(workers, gpus) if gpus else workers, threads_per_worker=1,
                                   processes=True, host="127.0.0.1", dashboard_address=None,
                                   resources=resources, silence_logs=40)
        try:
            client = Client(cluster if cluster is not None else scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as error:
            if cluster is not None:
                cluster.close()
            raise InputError(f"cannot reach the Dask scheduler {scheduler or '(local)'}: {error}; check the address "
                             "(e.g. tcp://head:8786) and that the scheduler is running") from None
        try:
            run_id = uuid.uuid4().hex[:8]  # tasks of two batches on one cluster never share a key
            futures = {client.submit(run_series, item, str(out), options, device, threads, overwrite,
                                     key=f"sr4zct-{item.name}-{run_id}", resources=resources, pure=False): item
                       for item in todo}
            bar = _bar(progress, total, total - len(todo))
            for future in as_completed(futures):
                item = futures[future]
                try:
                    summary[item.row] = future.result()
                except Exception as error:  # the worker died, or the task could not be run at all
                    summary[item.row] = summary_row(item, "failed", error=f"{error.__class__.__name__}: {error}")
                _warn(bar, progress, summary[item.row].pop(WARNINGS, []))
                _tick(bar, progress, summary[item.row])
            _close(bar)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _batch_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if _gpu_count() else "cpu"


def _bar(progress: str, total: int, done: int):
    if progress != "bar":
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="series", unit="series", file=sys.stderr)


def _tick(bar, progress: str, row: dict) -> None:
    if bar is not None:
        bar.set_postfix_str(f"{row['name']}: {row['status']}", refresh=False)
        bar.update(1)
    elif progress == "json":
        sys.stderr.write(json.dumps({"stage": "batch", "series": row["name"], "status": row["status"]}) + "\n")


def _warn(bar, progress: str, notes: list[str]) -> None:
    """A worker's Python warnings, as the command's own: JSON objects with --progress json, else warning lines."""
    for note in notes:
        if progress == "json":
            sys.stderr.write(json.dumps({"warning": note}) + "\n")
        elif bar is not None:
            bar.write(f"warning: {note}", file=sys.stderr)
        else:
            sys.stderr.write(f"warning: {note}\n")


def _close(bar) -> None:
    if bar is not None:
        bar.close()


def write_summary(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    """summary.csv and summary.json in out, each verified and published atomically."""
    from .io.publish import write_text
    from .metrics import strict_json

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_text(out / "summary.csv", table.getvalue())
    json_path = write_text(out / "summary.json", json.dumps(strict_json(rows), indent=2, allow_nan=False))
    return csv_path, json_path
