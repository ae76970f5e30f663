"""The Slicer path below the panel, in the conditions real Slicer brings: a worker whose output is not clean text, an
input under a parent transform, a DICOM volume whose axis the file alone does not tell, a closed DICOM database,
and a Python without psutil, tqdm or matplotlib."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import vtk

slicer = pytest.importorskip("slicer")
import slicer.util  # noqa: E402

from SR4ZCTLib import InputError  # noqa: E402
from SR4ZCTLib.mrml.job import EnhanceJob, EnhanceRequest, JobState  # noqa: E402
from SR4ZCTLib.mrml.nodes import ijk_to_ras, set_ijk_to_ras, slicer_dicom_lookup  # noqa: E402
from SR4ZCTLib.core.volume import Volume  # noqa: E402

from slicer_panel_model import DicomDatabase, MODULE_DIR, ROOT  # noqa: E402

BLOCKED_IMPORTS = ROOT / "tests" / "blocked_imports"


def ct_node(scene, spacing=(0.7, 0.7, 2.5), shape=(6, 24, 20), name="CT"):
    array = np.full(shape, -1000, np.int16)
    array[:, 5:-5, 4:-4] = 40
    array[:, shape[1] // 2 - 2:shape[1] // 2 + 2, shape[2] // 2 - 2:shape[2] // 2 + 2] = 700
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    set_ijk_to_ras(node, Volume.matrix_from((10.0, -20.0, 30.0), spacing, np.eye(3)))
    node.CreateDefaultDisplayNodes()
    return node


def fake_worker(folder, script: str) -> str:
    """An executable standing in for Slicer's Python: it ignores its arguments and runs this shell script."""
    path = folder / "PythonSlicer"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_undecodable_worker_output_ends_the_job_with_its_error(scene, tmp_path):
    node = ct_node(scene)
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    logged = []
    python = fake_worker(tmp_path, r"printf 'garbled \377\376 bytes\nerror: the worker could not start\n'; exit 2")
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=2.5), python, on_log=logged.append).start()
    with pytest.raises(InputError, match="the worker could not start"):
        job.wait(timeout=20)
    assert job.state == JobState.FAILED and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count
    assert any(line.startswith("garbled ") and "\ufffd" in line for line in logged)


def test_result_lies_under_the_inputs_parent_transform(scene):
    node = ct_node(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 100.0)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=2.5, iterations=2, device="cpu"), sys.executable)
    result = job.start().wait(timeout=300)
    assert result.GetTransformNodeID() == transform.GetID()
    np.testing.assert_allclose(ijk_to_ras(result)[:3, 3], ijk_to_ras(node)[:3, 3], atol=1e-6)


def test_the_worker_enhances_along_the_axis_the_panel_showed(scene):
    # A DICOM series (slices stacked along k) with wide pixel columns: a file alone would suggest axis i.
    node = ct_node(scene, spacing=(1.2, 0.7, 1.0), shape=(8, 24, 12))
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=1.0, iterations=2, device="cpu"), sys.executable)
    result = job.start().wait(timeout=300)
    np.testing.assert_allclose(result.GetSpacing(), (1.2, 0.7, 0.7), atol=1e-6)
    assert slicer.util.arrayFromVolume(result).shape == (11, 24, 12)


def test_confidence_map_comes_as_a_second_node_on_the_results_grid(scene):
    # Into an output node the user chose: the confidence map is a new node linked to it.
    node = ct_node(scene)
    chosen = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my result")
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=2.5, iterations=2, device="cpu", confidence=True),
                     sys.executable, output_node=chosen, output_name="CT SR4ZCT")
    result = job.start().wait(timeout=300)
    assert result is chosen and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count + 1
    confidence = job.confidence_node
    assert confidence.GetName() == "CT SR4ZCT confidence" and confidence.GetAttribute("SR4ZCT.confidenceOf") == chosen.GetID()
    assert slicer.util.arrayFromVolume(confidence).shape == slicer.util.arrayFromVolume(chosen).shape
    np.testing.assert_allclose(ijk_to_ras(confidence), ijk_to_ras(chosen), atol=1e-6)
    assert float(slicer.util.arrayFromVolume(confidence).max()) > 0.0


@pytest.mark.parametrize("confidence_script", [
    "head -c 300 input.nrrd > confidence.nrrd",  # cut short
    "true",  # never written
    f"{sys.executable} -c \"import SimpleITK as s; s.WriteImage(s.ReadImage('input.nrrd')[:, :, :3], 'confidence.nrrd')\"",
], ids=["truncated", "missing", "another-grid"])
def test_a_bad_confidence_map_adds_neither_node(scene, tmp_path, confidence_script):
    node = ct_node(scene)
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    python = fake_worker(tmp_path, f"cp input.nrrd output.nrrd && {confidence_script}\nexit 0")  # a good result
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=2.5, confidence=True), python).start()
    with pytest.raises(InputError, match="confidence map"):
        job.wait(timeout=30)
    assert job.state == JobState.FAILED and job.result_node is None and job.confidence_node is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count


def test_a_closed_dicom_database_is_never_queried():
    database = DicomDatabase({"1.2.3": "3.0"}, is_open=False)
    slicer.dicomDatabase = database
    try:
        assert slicer_dicom_lookup() is None and database.queries == []
        database.isOpen = True
        assert slicer_dicom_lookup()("1.2.3") == "3.0"
    finally:
        del slicer.dicomDatabase


def run_without(packages: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    environment = dict(os.environ, SR4ZCT_BLOCK=packages,
                       PYTHONPATH=os.pathsep.join([str(BLOCKED_IMPORTS), str(MODULE_DIR)]))
    return subprocess.run([sys.executable, *args], env=environment, capture_output=True, text=True, timeout=300,
                          cwd=str(cwd))


def test_available_memory_is_known_without_psutil(tmp_path):
    import psutil

    result = run_without("psutil", ["-c", "from SR4ZCTLib.core.memory import available_memory_bytes as a; print(a())"],
                         tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == pytest.approx(psutil.virtual_memory().available, rel=0.25)


def test_cli_progress_and_report_without_tqdm_and_matplotlib(tmp_path):
    import SimpleITK as sitk

    array = np.full((6, 20, 16), -1000, np.int16)
    array[:, 5:15, 4:12] = 40
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(image, str(tmp_path / "in.nrrd"))
    result = run_without("psutil,tqdm,matplotlib",
                         ["-m", "SR4ZCTLib.cli", "enhance", "in.nrrd", "-o", "out.nrrd", "--iterations", "2",
                          "--device", "cpu", "--progress", "bar", "--report", "report"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "training: 100%" in result.stderr
    assert "warning: matplotlib is not installed, so report.png was not written" in result.stderr
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["metrics.json"]
    assert "training" in json.loads((tmp_path / "report" / "metrics.json").read_text())
