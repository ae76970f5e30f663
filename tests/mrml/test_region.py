"""A markups ROI limits the run to a region, cropped on the input's own voxel grid (no resampling), on real MRML."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import slicer.util  # noqa: E402

from SR4ZCTLib import InputError  # noqa: E402
from SR4ZCTLib.mrml.job import EnhanceJob, EnhanceRequest  # noqa: E402
from SR4ZCTLib.mrml.nodes import crop_to_box, ijk_to_ras, roi_index_box, set_ijk_to_ras, volume_from_node  # noqa: E402
from SR4ZCTLib.core.volume import Volume  # noqa: E402

from conftest import oblique_matrix  # noqa: E402


BRIGHT = (7, 15, 13)  # (k, j, i) of the bright spot


def ct_with_a_bright_spot(scene, matrix):
    array = np.full((14, 32, 30), -1000, np.int16)
    array[:, 4:28, 4:26] = 40
    k, j, i = BRIGHT
    array[:, j + 3:j + 5, i - 3:i] = -1000  # an airway beside it
    array += np.random.default_rng(3).integers(-20, 20, array.shape).astype(np.int16)
    array[k, j - 1:j + 2, i - 1:i + 2] = 1500  # a small bright object in one slice
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(node, array)
    set_ijk_to_ras(node, matrix)
    return node


def ras_of(matrix, k, j, i):
    return (matrix @ np.array([i, j, k, 1.0]))[:3]


def roi_around(scene, centre, radius):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "region")
    roi.SetXYZ(*centre)
    roi.SetRadiusXYZ(*radius)
    return roi


@pytest.mark.parametrize("matrix", [Volume.matrix_from((10.0, -20.0, 30.0), (0.5, 0.5, 2.0), np.eye(3)),
                                    oblique_matrix()], ids=["axial", "oblique-flipped"])
def test_the_crop_is_on_the_inputs_own_grid(scene, matrix):
    node = ct_with_a_bright_spot(scene, matrix)
    volume = volume_from_node(node)
    roi = roi_around(scene, ras_of(ijk_to_ras(node), *BRIGHT), (6.0, 6.0, 6.0))
    box = roi_index_box(roi, volume)
    cropped = crop_to_box(volume, box)
    (i0, i1), (j0, j1), (k0, k1) = box
    np.testing.assert_array_equal(cropped.array, volume.array[k0:k1, j0:j1, i0:i1])  # the voxels, not resampled
    np.testing.assert_allclose(cropped.ijk_to_world[:3, :3], volume.ijk_to_world[:3, :3])
    np.testing.assert_allclose(cropped.origin, ras_of(volume.ijk_to_world, k0, j0, i0), atol=1e-9)


def test_a_region_too_small_or_off_the_volume_is_refused(scene):
    node = ct_with_a_bright_spot(scene, Volume.matrix_from((0.0, 0.0, 0.0), (0.5, 0.5, 2.0), np.eye(3)))
    far = roi_around(scene, (500.0, 500.0, 500.0), (5.0, 5.0, 5.0))
    with pytest.raises(InputError, match="make the region larger or move it onto the volume"):
        EnhanceJob(node, EnhanceRequest(), sys.executable, roi_node=far).start()


def test_a_bright_point_inside_the_region_lands_where_it_was(scene):
    matrix = Volume.matrix_from((10.0, -20.0, 30.0), (0.5, 0.5, 2.0), np.eye(3))
    node = ct_with_a_bright_spot(scene, matrix)
    point = ras_of(matrix, *BRIGHT)
    roi = roi_around(scene, point + np.array([1.2, -0.7, 0.9]), (5.0, 5.0, 7.0))
    job = EnhanceJob(node, EnhanceRequest(thickness_mm=2.0, iterations=2, device="cpu"), sys.executable, roi_node=roi)
    result = job.start().wait(timeout=300)
    array, result_matrix = slicer.util.arrayFromVolume(result), ijk_to_ras(result)
    (i0, i1), (j0, j1), (k0, k1) = job.region_box
    assert array.shape[1:] == (j1 - j0, i1 - i0), "only the region was enhanced"
    assert array.shape[0] == int(round((k1 - k0 - 1) * 2.0 / 0.5)) + 1
    np.testing.assert_allclose(result_matrix[:3, :3] / np.linalg.norm(result_matrix[:3, :3], axis=0), np.eye(3),
                               atol=1e-9)  # the input's directions
    np.testing.assert_allclose(result_matrix[:3, 3], ras_of(matrix, k0, j0, i0), atol=1e-6)  # on the input's grid
    weights = np.clip(array.astype(np.float64) - 0.5 * (1500 + 40), 0, None)  # the bright object above half height
    k, j, i = (np.tensordot(weights, np.indices(array.shape), axes=([0, 1, 2], [1, 2, 3])) / weights.sum())
    np.testing.assert_allclose(ras_of(result_matrix, k, j, i), point, atol=0.01)
    record = json.loads(result.GetAttribute("SR4ZCT.provenance"))
    assert record["region"] == {"roi": "region", "ijk_box": [list(pair) for pair in job.region_box]}
