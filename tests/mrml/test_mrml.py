"""The Qt-free Slicer part on real MRML (slicer-core): nodes in and out, DICOM thickness, the worker job."""

from __future__ import annotations

import glob
import os
import sys
import tempfile
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import slicer.util  # noqa: E402

from SR4ZCTLib import Cancelled, InputError  # noqa: E402
from SR4ZCTLib.mrml.job import EnhanceJob, EnhanceRequest, JobState  # noqa: E402
from SR4ZCTLib.mrml.nodes import (  # noqa: E402
    dicom_slice_thickness,
    ijk_to_ras,
    node_from_volume,
    node_geometry,
    set_ijk_to_ras,
    volume_from_node,
    write_node,
)
from SR4ZCTLib.core.volume import Volume, enhanced_matrix  # noqa: E402

from conftest import oblique_matrix  # noqa: E402

IDENTITY = Volume.matrix_from((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))


def make_node(scene, array, matrix, name="CT"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    set_ijk_to_ras(node, matrix)
    node.CreateDefaultDisplayNodes()
    return node


def sorted_world_samples(array, matrix):
    """Voxel values keyed by their world position: equal for two representations of the same grid."""
    k, j, i = np.indices(array.shape).reshape(3, -1)
    world = (matrix @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3].T
    order = np.lexsort(np.round(world, 4).T[::-1])
    return np.round(world[order], 4), array.reshape(-1)[order]


@pytest.mark.parametrize("matrix", [IDENTITY, oblique_matrix()], ids=["identity", "oblique-flipped"])
def test_node_round_trip_keeps_geometry_and_leaves_the_input_alone(scene, small_ct, matrix):
    node = make_node(scene, small_ct, matrix)
    volume = volume_from_node(node)
    np.testing.assert_allclose(volume.ijk_to_world, matrix, atol=1e-9)
    volume.array[:] = 0  # a copy: changing it must not touch the node
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), small_ct)
    result = Volume(small_ct[:, :, :] + 1, enhanced_matrix(volume_from_node(node), 2, 0.5))
    out = node_from_volume(result, scene, "CT SR4ZCT", reference=node)
    np.testing.assert_allclose(ijk_to_ras(out), enhanced_matrix(volume_from_node(node), 2, 0.5), atol=1e-9)
    np.testing.assert_allclose(out.GetOrigin(), node.GetOrigin(), atol=1e-9)
    assert out.GetSpacing()[:2] == pytest.approx(node.GetSpacing()[:2]) and out.GetSpacing()[2] == pytest.approx(0.5)
    np.testing.assert_allclose(ijk_to_ras(node), matrix, atol=1e-12)
    assert out.GetDisplayNode() is not None


def test_nrrd_through_storage_nodes_keeps_the_physical_grid(scene, small_ct, tmp_path):
    node = make_node(scene, small_ct, oblique_matrix())
    path = tmp_path / "ct.nrrd"
    write_node(node, str(path))
    back = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "back")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(back)
    world_a, values_a = sorted_world_samples(small_ct, oblique_matrix())
    world_b, values_b = sorted_world_samples(slicer.util.arrayFromVolume(back), ijk_to_ras(back))
    np.testing.assert_allclose(world_a, world_b, atol=1e-4)
    np.testing.assert_array_equal(values_a, values_b)


def test_dicom_thickness_lookup_with_and_without_dicom_attributes(scene, small_ct):
    node = make_node(scene, small_ct, oblique_matrix())
    calls = []

    def lookup(uid):
        calls.append(uid)
        return {"1.2.3": "3.000000", "9.9": ""}.get(uid)

    assert dicom_slice_thickness(node, lookup) is None and calls == []  # not from DICOM: no lookup at all
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4 1.2.5")
    assert dicom_slice_thickness(node, lookup) == pytest.approx(3.0)
    assert calls == ["1.2.3"]
    geometry, notes = node_geometry(node, lookup=lookup)
    assert geometry.thickness_source == "dicom" and geometry.acquisition.overlap_mm == pytest.approx(0.5)
    node.SetAttribute("DICOM.instanceUIDs", "9.9")
    geometry, notes = node_geometry(node, lookup=lookup)
    assert dicom_slice_thickness(node, lookup) is None
    assert geometry.thickness_source == "assumed" and any("thickness unknown" in n for n in notes)
    assert dicom_slice_thickness(node, None) is None


def _leftover_job_folders():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "SR4ZCT-*")))


def test_job_end_to_end_adds_exactly_one_node(scene, small_ct):
    node = make_node(scene, small_ct, oblique_matrix())
    before_folders = _leftover_job_folders()
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    seen = []
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=3.0, iterations=3, device="cpu"), sys.executable,
                     on_progress=seen.append)
    out = job.start().wait(timeout=300)
    assert job.state == JobState.COMPLETED
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count + 1
    assert out.GetName() == "CT SR4ZCT"
    expected = enhanced_matrix(volume_from_node(node), 2, 0.7)
    np.testing.assert_allclose(ijk_to_ras(out), expected, atol=1e-6)
    assert slicer.util.arrayFromVolume(out).shape == (int(5 * 2.5 / 0.7) + 1, 24, 20)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), small_ct)
    np.testing.assert_allclose(ijk_to_ras(node), oblique_matrix())
    assert {p.stage for p in seen} >= {"training", "inference"}
    assert "validation_psnr_db" in job.metrics.training
    assert _leftover_job_folders() == before_folders


def test_job_cancel_leaves_no_node_and_no_files(scene, small_ct):
    node = make_node(scene, small_ct, oblique_matrix())
    before_folders = _leftover_job_folders()
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=3.0, iterations=100000, device="cpu"), sys.executable).start()
    while job.poll() and (job.last_progress is None or job.last_progress.stage != "training"):
        time.sleep(0.05)
    cancelled_at = time.time()
    job.cancel()
    with pytest.raises(Cancelled):
        job.wait(timeout=30)
    assert job.state == JobState.CANCELLED
    assert time.time() - cancelled_at < 5.0
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count
    assert _leftover_job_folders() == before_folders
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), small_ct)


def test_job_worker_failure_is_reported_without_a_node(scene, small_ct, tmp_path):
    node = make_node(scene, small_ct, oblique_matrix())
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=3.0, model_path=str(tmp_path / "missing.pt"), device="cpu"),
                     sys.executable).start()
    with pytest.raises(InputError, match="does not exist"):
        job.wait(timeout=120)
    assert job.state == JobState.FAILED
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count


def test_label_map_is_refused_before_anything_starts(scene):
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labels, np.zeros((5, 6, 7), np.int16))
    with pytest.raises(InputError, match="label map"):
        EnhanceJob(labels, EnhanceRequest(), sys.executable).start()


# ---- the reliability table on the Slicer path: refused at start, nothing added, input untouched ----------------------
def _float_with(value):
    def make(array):
        array = array.astype(np.float32)
        array[1, 2, 3] = value
        return array
    return make


def _sheared():
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.25], [0.0, 0.0, 1.0]])
    return Volume.matrix_from((0, 0, 0), (0.7, 0.7, 2.5), directions / np.linalg.norm(directions, axis=0))


NODE_CASES = [
    ("too few slices", lambda a: a[:2], None, {}, "too few slices"),
    ("NaN voxels", _float_with(np.nan), None, {}, "NaN or infinite"),
    ("Inf voxels", _float_with(np.inf), None, {}, "NaN or infinite"),
    ("label values", lambda a: (a > 0).astype(np.int16), None, {}, "label map"),
    ("MR-like", lambda a: (a + 1024 + np.random.default_rng(0).integers(0, 300, a.shape)).astype(np.int16), None, {},
     "no voxel is below 0"),
    ("sheared grid", lambda a: a, _sheared(), {}, "sheared"),
    ("thickness 0", lambda a: a, None, {"thickness_mm": 0.0}, "thickness must be positive"),
    ("thickness NaN", lambda a: a, None, {"thickness_mm": float("nan")}, "thickness"),
    ("increment negative", lambda a: a, None, {"thickness_mm": 3.0, "increment_mm": -1.0}, "increment must be positive"),
]


@pytest.mark.parametrize("make_array,matrix,request_options,message", [c[1:] for c in NODE_CASES],
                         ids=[c[0] for c in NODE_CASES])
def test_bad_node_input_is_refused_before_anything_starts(scene, small_ct, make_array, matrix, request_options, message):
    array = make_array(small_ct)
    node = make_node(scene, array, oblique_matrix() if matrix is None else matrix)
    before, geometry_before = slicer.util.arrayFromVolume(node).copy(), ijk_to_ras(node)
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    folders = _leftover_job_folders()
    with pytest.raises(InputError, match=message):
        EnhanceJob(node, EnhanceRequest(**request_options), sys.executable).start()
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count
    assert _leftover_job_folders() == folders
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    np.testing.assert_array_equal(ijk_to_ras(node), geometry_before)


def test_output_node_same_as_input_is_refused(scene, small_ct):
    node = make_node(scene, small_ct, oblique_matrix())
    with pytest.raises(InputError, match="output volume is the input"):
        EnhanceJob(node, EnhanceRequest(), sys.executable, output_node=node).start()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), small_ct)


def test_node_too_large_for_memory_is_refused_unless_forced(scene, small_ct, monkeypatch):
    import psutil

    from SR4ZCTLib.errors import ResourceError

    class Tiny:
        available = 10 * 2**20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    node = make_node(scene, small_ct, oblique_matrix())
    with pytest.raises(ResourceError, match="GiB.*crop"):
        EnhanceJob(node, EnhanceRequest(), sys.executable).start()
    job = EnhanceJob(node, EnhanceRequest(force=True, iterations=1, device="cpu"), sys.executable).start()
    job.cancel()
    with pytest.raises(Cancelled):
        job.wait(timeout=30)


def test_gap_on_a_node_runs_with_a_warning(scene, small_ct):
    node = make_node(scene, small_ct, oblique_matrix())
    logged = []
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=2.0, iterations=2, device="cpu"), sys.executable,
                     on_log=logged.append)
    out = job.start().wait(timeout=120)
    assert any("gap of 0.5 mm" in line for line in logged)
    assert out is not None and job.state == JobState.COMPLETED


def test_same_node_same_seed_same_result(scene, small_ct):
    node = make_node(scene, small_ct, oblique_matrix())
    results = [slicer.util.arrayFromVolume(EnhanceJob(node, EnhanceRequest(thickness_mm=3.0, iterations=3, seed=4,
                                                                           device="cpu"), sys.executable)
                                           .start().wait(timeout=120)).copy() for _ in range(2)]
    np.testing.assert_array_equal(*results)
