"""Through-plane geometry from DICOM and files; I/O round trips keep geometry exactly."""

from __future__ import annotations

import numpy as np
import pytest

from SR4ZCTLib import InputError
from SR4ZCTLib.core.volume import Volume, enhanced_matrix, read_through_plane_geometry
from SR4ZCTLib.io.volumes import read_volume, write_volume

from conftest import CHEST_DICOM, needs_shared, oblique_matrix, stacked_positions, write_dicom_series


@needs_shared(CHEST_DICOM)
def test_real_chest_series_is_5mm_every_5mm_without_overlap():
    volume = read_volume(CHEST_DICOM)
    geometry, notes = read_through_plane_geometry(volume)
    summary = geometry.as_dict(volume)
    assert summary["shape"] == [64, 512, 512]
    assert summary["through_plane_axis"] == "k"
    assert summary["increment_mm"] == pytest.approx(5.0)
    assert summary["thickness_mm"] == pytest.approx(5.0)
    assert summary["overlap_mm"] == pytest.approx(0.0)
    assert summary["thickness_source"] == "dicom"
    assert summary["spacing_mm"][:2] == pytest.approx([0.841796875] * 2)
    assert volume.origin[2] == pytest.approx(-439.0)
    assert int(volume.array.min()) == -1024
    assert notes == []


@pytest.mark.parametrize("thickness,step,overlap", [(3.0, 2.0, 1.0), (2.0, 3.0, -1.0), (1.25, 0.625, 0.625)])
def test_synthetic_series_overlap_and_gap(tmp_path, small_ct, thickness, step, overlap):
    folder = write_dicom_series(tmp_path / "series", small_ct, stacked_positions(len(small_ct), step),
                                thickness=thickness)
    volume = read_volume(folder)
    geometry, notes = read_through_plane_geometry(volume)
    assert geometry.acquisition.increment_mm == pytest.approx(step)
    assert geometry.acquisition.thickness_mm == pytest.approx(thickness)
    assert geometry.acquisition.overlap_mm == pytest.approx(overlap)
    assert any("gap" in note for note in notes) == (overlap < 0)
    np.testing.assert_array_equal(volume.array, small_ct)


def test_slices_are_sorted_along_the_normal_whatever_the_file_order(tmp_path, small_ct):
    positions = stacked_positions(len(small_ct), 2.0)
    shuffled = [5, 2, 0, 4, 1, 3]
    folder = write_dicom_series(tmp_path / "s", small_ct[shuffled], [positions[i] for i in shuffled], thickness=2.0)
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.array, small_ct)
    np.testing.assert_allclose(volume.origin, positions[0])


def test_coronal_acquisition_finds_the_slice_normal(tmp_path, small_ct):
    """A coronal series: rows along x, columns along -z, slices stacked along y (LPS)."""
    orientation = (1, 0, 0, 0, 0, -1)
    normal = np.cross([1, 0, 0], [0, 0, -1])
    folder = write_dicom_series(tmp_path / "cor", small_ct, stacked_positions(len(small_ct), 3.0, normal=normal),
                                orientation=orientation, thickness=4.0)
    volume = read_volume(folder)
    geometry, _ = read_through_plane_geometry(volume)
    assert geometry.as_dict(volume)["slice_normal"] == pytest.approx(list(normal))
    assert geometry.acquisition.increment_mm == pytest.approx(3.0)
    assert geometry.acquisition.overlap_mm == pytest.approx(1.0)
    assert geometry.axis == 2


@pytest.mark.parametrize("problem", ["missing", "duplicated"])
def test_non_uniform_positions_are_refused_naming_the_slices(tmp_path, small_ct, problem):
    positions = stacked_positions(len(small_ct), 2.0)
    if problem == "missing":
        keep = [0, 1, 2, 4, 5]
        array, positions = small_ct[keep], [positions[i] for i in keep]
    else:
        array, positions = np.concatenate([small_ct, small_ct[:1]]), positions + [positions[3]]
    folder = write_dicom_series(tmp_path / problem, array, positions, thickness=2.0)
    with pytest.raises(InputError, match=r"not uniform.*img0"):
        read_volume(folder)


def test_gantry_tilt_is_refused(tmp_path, small_ct):
    positions = [p + np.array([0.0, 0.5 * i, 0.0]) for i, p in enumerate(stacked_positions(len(small_ct), 2.0))]
    folder = write_dicom_series(tmp_path / "tilt", small_ct, positions, thickness=2.0)
    with pytest.raises(InputError, match="gantry tilt"):
        read_volume(folder)


def test_gantry_tilt_tolerance_does_not_grow_with_the_slice_count(tmp_path):
    """300 slices tilted 0.52 degrees put the last one 2.7 mm sideways: refused however long the series."""
    count, increment = 300, 1.0
    array = np.full((count, 4, 4), 40, dtype=np.int16)
    sideways = np.tan(np.radians(0.52)) * increment
    positions = [p + np.array([0.0, sideways * i, 0.0]) for i, p in enumerate(stacked_positions(count, increment))]
    folder = write_dicom_series(tmp_path / "tilt", array, positions, thickness=increment)
    with pytest.raises(InputError, match="gantry tilt"):
        read_volume(folder)


def test_two_series_in_one_folder_are_refused(tmp_path, small_ct):
    folder = tmp_path / "two"
    write_dicom_series(folder / "a", small_ct, stacked_positions(6, 2.0))
    write_dicom_series(folder / "b", small_ct, stacked_positions(6, 2.0))
    for file in (folder / "b").iterdir():
        file.rename(folder / f"b_{file.name}")
    for file in (folder / "a").iterdir():
        file.rename(folder / f"a_{file.name}")
    with pytest.raises(InputError, match="2 DICOM series"):
        read_volume(folder)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_round_trip_keeps_geometry_and_values(tmp_path, small_ct, suffix, dtype):
    matrix = oblique_matrix()
    volume = Volume(small_ct.astype(dtype), matrix)
    path = write_volume(volume, tmp_path / f"v{suffix}")
    back = read_volume(path)
    np.testing.assert_allclose(back.ijk_to_world, matrix, atol=1e-6)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == dtype
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_big_endian_nrrd_is_read(tmp_path, small_ct):
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {small_ct.shape[2]} {small_ct.shape[1]} {small_ct.shape[0]}\n"
        "space directions: (0.5,0,0) (0,0.5,0) (0,0,2.5)\nkinds: domain domain domain\n"
        "endian: big\nencoding: raw\nspace origin: (1,2,3)\n\n"
    )
    path = tmp_path / "big.nrrd"
    path.write_bytes(header.encode() + small_ct.astype(">i2").tobytes())
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, small_ct)
    assert volume.array.dtype.byteorder in ("=", "<", "|")
    assert volume.spacing == pytest.approx([0.5, 0.5, 2.5])


def test_coarsest_axis_is_through_plane_for_files():
    volume = Volume(np.zeros((20, 8, 10), np.int16), Volume.matrix_from((0, 0, 0), (3.0, 0.7, 0.7), np.eye(3)))
    geometry, _ = read_through_plane_geometry(volume, thickness_mm=3.0)
    assert geometry.axis == 0 and geometry.axis_source == "geometry"
    assert geometry.array_axis == 2


def test_enhanced_matrix_changes_only_the_through_plane_column():
    matrix = oblique_matrix()
    volume = Volume(np.zeros((5, 6, 7), np.int16), matrix)
    new = enhanced_matrix(volume, 2, 0.5)
    np.testing.assert_allclose(new[:, :2], matrix[:, :2])
    np.testing.assert_allclose(new[:, 3], matrix[:, 3])
    np.testing.assert_allclose(new[:3, 2], matrix[:3, 2] / 2.5 * 0.5)


def test_sheared_grid_is_refused():
    directions = np.array([[1, 0, 0], [0, 1, 0.2], [0, 0, 1.0]])
    directions /= np.linalg.norm(directions, axis=0)
    volume = Volume(np.zeros((5, 6, 7), np.int16), Volume.matrix_from((0, 0, 0), (1, 1, 3), directions))
    with pytest.raises(InputError, match="sheared"):
        read_through_plane_geometry(volume)
