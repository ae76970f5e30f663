"""A non-blocking enhancement job for Slicer: the engine runs in a separate Python process.

The input node is written to a private temporary folder, `python -m SR4ZCTLib.cli enhance
--progress json` runs there, a reader thread queues its output lines, and `poll()` (called by a
Qt timer in Slicer, or in a loop by `wait()`) turns them into progress reports. Cancel kills the
whole process tree. Only a completed run adds nodes (the result and, when asked, its confidence map);
the temporary folder is always removed.
No Qt here, so the same code runs under slicer-core in the tests.
"""

from __future__ import annotations

import enum
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import Cancelled, InputError
from ..core.intensity import check_intensities
from ..metrics import RunMetrics
from ..options import RunOptions
from ..core.memory import check_memory, estimate_memory_bytes
from .nodes import (DicomValueLookup, add_confidence_node, crop_to_box, lps_to_ras, node_from_volume,
                    roi_index_box, set_provenance, volume_from_node, write_node)
from .library import LibraryModel, ModelLibrary
from ..progress import Progress
from ..core.volume import AXIS_NAMES, read_through_plane_geometry
from ..io.volumes import read_volume, write_volume

LIBRARY_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding SR4ZCTLib
CONFIDENCE_FILE = "confidence.nrrd"  # in the job's temporary folder


class JobState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    IN_PROGRESS = "in progress"
    CANCEL_REQUESTED = "cancel requested"
    IMPORT_RESULTS = "importing results"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


EnhanceRequest = RunOptions  # what one run is asked for, by the module panel or the console (options.py)


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill the process and every child (children first: killing the launcher alone leaves the worker)."""
    try:
        import psutil

        parent = psutil.Process(process.pid)
        children = parent.children(recursive=True)
        for child in children:
            child.kill()
        parent.kill()
        psutil.wait_procs(children + [parent], timeout=5)
        return
    except ImportError:
        pass
    except Exception:  # already gone
        return
    if hasattr(os, "killpg"):  # without psutil (Slicer ships none): the worker has its own process group
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:  # Windows: PythonSlicer is a launcher; taskkill /T ends the Python it started too
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        process.kill()


def _installed_version(name: str) -> Optional[str]:
    """A package's installed version, read without importing it (None when absent)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _with_own_sources(geometry, volume):
    """geometry with the volume's own source ("dicom", "geometry", "assumed") for a given number equal to the
    volume's own: the panel passes the values it filled in, which came from the volume, not from the user. Never
    claims more than the volume says (an unchanged assumed thickness stays "assumed")."""
    try:
        own, _ = read_through_plane_geometry(volume, None, None, geometry.acquisition.profile)
    except InputError:  # e.g. a DICOM thickness outside the engine's range: the given numbers are the user's
        return geometry
    thickness = own.thickness_source if _same_mm(own.acquisition.thickness_mm, geometry.acquisition.thickness_mm) \
        else geometry.thickness_source
    increment = own.increment_source if _same_mm(own.acquisition.increment_mm, geometry.acquisition.increment_mm) \
        else geometry.increment_source
    return replace(geometry, thickness_source=thickness, increment_source=increment)


def _same_mm(a: float, b: float) -> bool:
    """Equal to the panel's 3 decimals."""
    return abs(a - b) <= 5e-4


def _json_safe(value):
    """value with tuples as lists and non-finite floats as None, so json.dumps(allow_nan=False) takes it."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class EnhanceJob:
    """One run on one input node; see the module docstring for the life cycle."""

    def __init__(self, input_node, request: RunOptions, python_executable: Optional[str] = None,
                 output_node=None, output_name: Optional[str] = None,
                 on_progress: Optional[Callable[[Progress], None]] = None,
                 on_log: Optional[Callable[[str], None]] = None,
                 lookup: Optional[DicomValueLookup] = None, model_library: Optional[ModelLibrary] = None,
                 roi_node=None) -> None:
        """model_library: save the trained model there, keyed by its protocol (unless the request names a file);
        roi_node: enhance only the voxels inside this markups ROI (cropped on the input's grid, no resampling)."""
        self.input_node, self.request, self.output_node = input_node, request, output_node
        self.roi_node = roi_node
        self.region_box = None  # the input's voxels the run enhances, when limited to roi_node
        self.model_library = model_library
        self.python = python_executable or sys.executable
        self.output_name = output_name or f"{input_node.GetName()} SR4ZCT"
        self.on_progress, self.on_log, self.lookup = on_progress, on_log, lookup
        self.state = JobState.IDLE
        self.error: Optional[str] = None
        self.metrics: Optional[RunMetrics] = None
        self.result_node = None
        self.confidence_node = None
        self.last_progress: Optional[Progress] = None
        self.started_at: Optional[float] = None
        self.stage_started_at: dict[str, float] = {}
        self._process: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._folder: Optional[Path] = None
        self._reader_done = False
        self._reader_error: Optional[str] = None
        self._last_line: Optional[str] = None
        self.geometry = None  # the input's through-plane geometry as the run used it (read by start())

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> "EnhanceJob":
        """Check the input here (errors come at once), write it out and start the worker process."""
        self.state = JobState.STARTING
        if self.output_node is not None and self.output_node is self.input_node:
            raise InputError("the output volume is the input volume; choose 'Create new volume' or another node")
        volume = volume_from_node(self.input_node, self.lookup)
        if self.roi_node is not None:
            self.region_box = roi_index_box(self.roi_node, volume)
            volume = crop_to_box(volume, self.region_box)
        geometry, notes = read_through_plane_geometry(volume, self.request.thickness_mm, self.request.increment_mm,
                                                      self.request.profile)
        check_intensities(volume.array, self.request.allow_non_hu)
        self.geometry = _with_own_sources(geometry, volume)
        if self.model_library is not None and self.request.save_model_path is None and self.request.model_path is None:
            acquisition = geometry.acquisition
            self.request = replace(self.request, save_model_path=str(self.model_library.new_model_path(
                acquisition.thickness_mm, acquisition.increment_mm, min(geometry.in_plane_spacing_mm),
                acquisition.profile, self.request.preset)))
        grid = min(geometry.in_plane_spacing_mm)
        check_memory(estimate_memory_bytes(volume.array.shape, geometry.array_axis, geometry.acquisition.increment_mm,
                                           grid, self.request.target_spacing_mm or grid), self.request.force)
        for note in notes:
            self._log(f"warning: {note}")
        self._folder = Path(tempfile.mkdtemp(prefix="SR4ZCT-"))
        try:
            source = self._folder / "input.nrrd"
            if self.roi_node is not None:
                write_volume(lps_to_ras(volume), source)  # files are LPS; lps_to_ras is its own inverse
            else:
                write_node(self.input_node, str(source))
            command = [self.python, "-m", "SR4ZCTLib.cli", "enhance", str(source), "-o", str(self._folder / "output.nrrd"),
                       "--progress", "json", "--axis", AXIS_NAMES[geometry.axis],  # the panel's axis, not a re-guess
                       *replace(self.request, thickness_mm=geometry.acquisition.thickness_mm,
                                increment_mm=geometry.acquisition.increment_mm).argv()]
            if self.request.confidence:
                command += ["--confidence", str(self._folder / CONFIDENCE_FILE)]
            environment = dict(os.environ)
            environment["PYTHONPATH"] = os.pathsep.join(filter(None, [LIBRARY_PARENT, environment.get("PYTHONPATH")]))
            environment["PYTHONUNBUFFERED"] = "1"
            environment["PYTHONIOENCODING"] = "utf-8"
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                encoding="utf-8", errors="replace", bufsize=1, env=environment, cwd=str(self._folder),
                start_new_session=(os.name == "posix"),
            )
        except BaseException:
            self._remove_folder()
            self.state = JobState.FAILED
            raise
        self.started_at = time.time()
        threading.Thread(target=self._read_output, daemon=True).start()
        self.state = JobState.IN_PROGRESS
        return self

    def _read_output(self) -> None:
        """Queue the worker's lines; always ends with None, so poll() always sees the end (a failure is kept)."""
        try:
            assert self._process is not None and self._process.stdout is not None
            for line in self._process.stdout:
                self._lines.put(line.rstrip("\n"))
        except BaseException as error:
            self._reader_error = f"reading the SR4ZCT worker's output failed: {error}"
        finally:
            self._lines.put(None)

    def _log(self, line: str) -> None:
        if self.on_log is not None:
            self.on_log(line)

    # -- running -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in (JobState.STARTING, JobState.IN_PROGRESS, JobState.CANCEL_REQUESTED, JobState.IMPORT_RESULTS)

    def poll(self) -> bool:
        """Handle queued output; finish when the worker has ended. True while the job is still running."""
        if self.state not in (JobState.IN_PROGRESS, JobState.CANCEL_REQUESTED):
            return self.running
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._reader_done = True
                break
            self._handle_line(line)
        if self._reader_error is not None and self._process is not None and self._process.poll() is None:
            kill_process_tree(self._process)  # nobody reads its output any more: it would block on a full pipe
        if self._reader_done and self._process is not None and self._process.poll() is not None:
            self._finish(self._process.returncode)
        return self.running

    def _handle_line(self, line: str) -> None:
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self._log(line)
                return
            if "warning" in event:  # --progress json sends warnings as objects; show them as the CLI would
                self._log(f"warning: {event['warning']}")
                return
            if event.get("stage") == "done":
                self.metrics = RunMetrics.from_json(event.get("metrics", {}))
                return
            progress = Progress(event["stage"], float(event["fraction"]), event.get("message", ""),
                                event.get("metrics", {}))
            self.last_progress = progress
            self.stage_started_at.setdefault(progress.stage, time.time())
            if self.on_progress is not None:
                self.on_progress(progress)
            return
        if line.startswith("error:"):
            self.error = line[len("error:"):].strip()
        elif line.strip():
            self._last_line = line.strip()  # e.g. the last line of a traceback
        self._log(line)

    def seconds_left(self) -> Optional[float]:
        """Time left in the current stage, from its pace so far (None until there is enough to tell)."""
        progress = self.last_progress
        if progress is None or progress.fraction < 0.02 or progress.stage not in self.stage_started_at:
            return None
        elapsed = time.time() - self.stage_started_at[progress.stage]
        return elapsed * (1.0 - progress.fraction) / progress.fraction

    def cancel(self) -> None:
        """Stop the worker now; no node is added and the temporary files go."""
        if self.state in (JobState.IN_PROGRESS, JobState.STARTING) and self._process is not None:
            self.state = JobState.CANCEL_REQUESTED
            kill_process_tree(self._process)

    def _finish(self, return_code: int) -> None:
        try:
            if self.state == JobState.CANCEL_REQUESTED or return_code == 130:
                self.state = JobState.CANCELLED
                return
            if self._reader_error is not None:
                self.state = JobState.FAILED
                self.error = self._reader_error
                return
            if return_code != 0:
                self.state = JobState.FAILED
                self.error = self.error or (f"the SR4ZCT worker stopped with exit code {return_code} "
                                            f"({self._last_line or 'no output'}); see the log")
                return
            self.state = JobState.IMPORT_RESULTS
            result = lps_to_ras(read_volume(self._folder / "output.nrrd"))
            confidence = self._read_confidence(result) if self.request.confidence else None
            scene = self.input_node.GetScene()
            self.result_node = node_from_volume(result, scene, self.output_name, reference=self.input_node,
                                                output_node=self.output_node)
            set_provenance(self.result_node, self.provenance(), self.input_node)
            self._register_model()
            if confidence is not None:
                self._add_confidence_node(confidence, scene)
            self.state = JobState.COMPLETED
        except Exception as error:  # importing failed: report it, leave no node
            self.state = JobState.FAILED
            self.error = f"importing the result failed: {error}"
        finally:
            self._remove_folder()

    def provenance(self) -> dict:
        """How the result was made: the request, the acquisition with its sources, the metrics, the versions."""
        from .. import __version__

        geometry = self.geometry
        acquisition = geometry.acquisition
        return {
            "sr4zct_version": __version__,
            "torch_version": _installed_version("torch"),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "input": self.input_node.GetName(),
            "region": self._region(),
            "request": _json_safe(asdict(self.request)),
            "acquisition": {"thickness_mm": acquisition.thickness_mm, "thickness_source": geometry.thickness_source,
                            "increment_mm": acquisition.increment_mm, "increment_source": geometry.increment_source,
                            "profile": acquisition.profile, "through_plane_axis": AXIS_NAMES[geometry.axis],
                            "in_plane_spacing_mm": [float(v) for v in geometry.in_plane_spacing_mm]},
            "device": self.metrics.device if self.metrics is not None else None,
            "seed": self.request.seed,
            "model": (self.metrics.reused_model if self.metrics is not None else None) or None,
            "saved_model": self.request.save_model_path,
            "metrics": _json_safe(self.metrics.summary()) if self.metrics is not None else None,
        }

    def _region(self) -> Optional[dict]:
        """The ROI the run was limited to: its name and the voxel box of the input (first, last + 1 per i, j, k)."""
        if self.region_box is None:
            return None
        return {"roi": self.roi_node.GetName(), "ijk_box": [list(pair) for pair in self.region_box]}

    def _register_model(self) -> None:
        """File the model the worker saved in the library (its record beside the file)."""
        saved = self.request.save_model_path
        if self.model_library is None or saved is None or Path(saved).parent != self.model_library.folder:
            return
        acquisition, metrics = self.geometry.acquisition, self.metrics
        self.model_library.register(LibraryModel(
            saved, acquisition.thickness_mm, acquisition.increment_mm, float(min(self.geometry.in_plane_spacing_mm)),
            acquisition.profile, self.request.preset, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            self.input_node.GetName(), metrics.validation_psnr_db if metrics is not None else None))

    def _read_confidence(self, result):
        """The worker's confidence map, checked to lie on the result's grid (read before the scene is touched)."""
        try:
            confidence = lps_to_ras(read_volume(self._folder / CONFIDENCE_FILE))
        except Exception as error:
            raise InputError(f"the confidence map could not be read: {error}") from error
        if confidence.array.shape != result.array.shape or not np.allclose(confidence.ijk_to_world,
                                                                            result.ijk_to_world, atol=1e-4):
            raise InputError("the confidence map does not lie on the result's grid")
        return confidence

    def _add_confidence_node(self, confidence, scene) -> None:
        """The confidence node beside the result; if that fails, a result node made here goes too."""
        try:
            self.confidence_node = add_confidence_node(confidence, scene, self.result_node,
                                                       name=f"{self.output_name} confidence")
        except BaseException:
            if self.output_node is None:
                scene.RemoveNode(self.result_node)
            self.result_node = None
            raise

    def _remove_folder(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1):
        """Block until done (the console and tests); returns the output node or raises."""
        deadline = None if timeout is None else time.time() + timeout
        while self.poll():
            if deadline is not None and time.time() > deadline:
                self.cancel()
                self.poll()
                raise TimeoutError("SR4ZCT did not finish in time and was cancelled")
            time.sleep(interval)
        return self.result()

    def result(self):
        if self.state == JobState.COMPLETED:
            return self.result_node
        if self.state == JobState.CANCELLED:
            raise Cancelled("cancelled: no volume was added")
        raise InputError(self.error or "SR4ZCT failed")
