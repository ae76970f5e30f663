"""A result exported from Slicer as the derived DICOM series the command line writes, on real MRML and real DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pydicom = pytest.importorskip("pydicom")

from SR4ZCTLib import InputError  # noqa: E402
from SR4ZCTLib.io.dicom import read_source_series  # noqa: E402
from SR4ZCTLib.io.volumes import read_volume  # noqa: E402
from SR4ZCTLib.mrml.nodes import (INPUT_ATTRIBUTE, export_dicom_series, lps_to_ras, node_from_volume,  # noqa: E402
                                  volume_from_node)

CHEST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "chest_ct_5mm"


@pytest.mark.skipif(not CHEST.is_dir(), reason=f"{CHEST} (shared real DICOM) not present")
def test_the_exported_series_is_derived_from_the_inputs_instances(scene, tmp_path):
    files = sorted(CHEST.glob("*.dcm"))[:8]  # eight slices are enough, and quick
    series = tmp_path / "input"
    series.mkdir()
    for file in files:
        (series / file.name).write_bytes(file.read_bytes())
    source = read_source_series(series)
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in series.iterdir()}
    ct = node_from_volume(lps_to_ras(read_volume(series)), scene, "CT")
    ct.SetAttribute("DICOM.instanceUIDs", " ".join(by_uid))  # as Slicer's DICOM loader sets it
    result = node_from_volume(volume_from_node(ct), scene, "CT SR4ZCT", reference=ct)
    result.SetAttribute(INPUT_ATTRIBUTE, ct.GetID())

    out = export_dicom_series(result, ct, tmp_path / "derived", by_uid.get)
    derived = read_source_series(out)
    header = derived.header
    assert "DERIVED" in list(header.ImageType) and "SECONDARY" in list(header.ImageType)
    assert header.StudyInstanceUID == source.header.StudyInstanceUID
    assert header.FrameOfReferenceUID == source.header.FrameOfReferenceUID
    assert header.SeriesInstanceUID != source.header.SeriesInstanceUID and "SR4ZCT" in header.DerivationDescription
    referenced = {str(item.ReferencedSOPInstanceUID) for ds in (pydicom.dcmread(p) for p in sorted(out.iterdir()))
                  for item in ds.SourceImageSequence}
    assert referenced <= set(by_uid) and referenced
    back = read_volume(out)
    np.testing.assert_allclose(back.ijk_to_world, read_volume(series).ijk_to_world, atol=1e-3)
    np.testing.assert_array_equal(back.array, read_volume(series).array)


def test_a_result_whose_input_is_not_from_dicom_is_refused_before_writing(scene, tmp_path):
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    import slicer.util

    slicer.util.updateVolumeFromArray(ct, np.zeros((4, 5, 6), np.int16))
    with pytest.raises(InputError, match="load the input from DICOM"):
        export_dicom_series(ct, ct, tmp_path / "derived", None)
    assert not (tmp_path / "derived").exists()
