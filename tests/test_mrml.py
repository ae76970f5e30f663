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
from SR4ZCTLib.job import EnhanceJob, EnhanceRequest, JobState  # noqa: E402
from SR4ZCTLib.mrml import (  # noqa: E402
    dicom_slice_thickness,
    ijk_to_ras,
    node_from_volume,
    node_geometry,
    set_ijk_to_ras,
    volume_from_node,
    write_node,
)
from SR4ZCTLib.volume import Volume, enhanced_matrix  # noqa: E402

from conftest import oblique_matrix  # noqa: E402

IDENTITY = Volume.matrix_from((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))


@pytest.fixture
def scene():
    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(1)


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
    assert "validation_psnr_db" in job.metrics["training"]
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
