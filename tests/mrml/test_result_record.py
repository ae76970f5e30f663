"""How a result was made, kept with it on real MRML: the provenance attribute (saved with the scene) and the result
filed under the input's patient and study in the subject hierarchy."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import slicer.util  # noqa: E402

from SR4ZCTLib import __version__  # noqa: E402
from SR4ZCTLib.mrml.job import EnhanceJob, EnhanceRequest  # noqa: E402
from SR4ZCTLib.mrml.nodes import PROVENANCE_ATTRIBUTE, node_from_volume, provenance, set_provenance, volume_from_node  # noqa: E402,E501

from test_slicer_worker import ct_node  # noqa: E402


def file_under_study(scene, node):
    """Put node under a patient and a study, as Slicer's DICOM import does; returns (hierarchy, study item)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "CT chest")
    item = hierarchy.GetItemByDataNode(node)  # real Slicer's subject hierarchy logic adds one; slicer-core does not
    hierarchy.SetItemParent(item, study) if item else hierarchy.CreateItem(study, node)
    return hierarchy, study


def test_a_result_keeps_how_it_was_made_and_sits_in_the_inputs_study(scene, tmp_path):
    node = ct_node(scene)
    hierarchy, study = file_under_study(scene, node)
    request = EnhanceRequest(thickness_mm=3.0, iterations=2, device="cpu", seed=7, confidence=True)
    job = EnhanceJob(node, request, sys.executable)
    result = job.start().wait(timeout=300)

    for made in (result, job.confidence_node):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(made)) == study, made.GetName()
    record = json.loads(result.GetAttribute(PROVENANCE_ATTRIBUTE))  # strict JSON
    assert record["sr4zct_version"] == __version__ and record["torch_version"]
    assert record["request"]["thickness_mm"] == 3.0 and record["request"]["iterations"] == 2
    assert record["seed"] == 7 and record["device"] == job.metrics.device
    assert record["acquisition"]["thickness_source"] == "user"
    assert record["acquisition"]["increment_mm"] == pytest.approx(2.5)
    assert record["acquisition"]["increment_source"] == "geometry"
    assert record["metrics"]["training"]["validation_psnr_db"] == job.metrics.validation_psnr_db
    assert "history" not in record["metrics"]["training"]
    assert record["input"] == "CT" and provenance(result) == record

    storage = result.CreateDefaultStorageNode()  # File / Save: the attribute travels with the scene
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "result.nrrd"))
    assert storage.WriteData(result)
    result.SetAndObserveStorageNodeID(storage.GetID())
    for other in (node, job.confidence_node):
        other_storage = other.CreateDefaultStorageNode()
        scene.AddNode(other_storage)
        other_storage.SetFileName(str(tmp_path / f"{other.GetID()}.nrrd"))
        assert other_storage.WriteData(other)
        other.SetAndObserveStorageNodeID(other_storage.GetID())
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    scene.Clear(0)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Import()
    assert provenance(scene.GetFirstNodeByName("CT SR4ZCT")) == record


def test_a_node_without_a_record_has_none(scene):
    node = ct_node(scene)
    assert provenance(node) is None and provenance(None) is None
    node.SetAttribute(PROVENANCE_ATTRIBUTE, "{not json")
    assert provenance(node) is None
    with pytest.raises(ValueError):  # a NaN would not be strict JSON: refused, not written
        set_provenance(node, {"psnr": float("nan")})


def test_a_result_without_a_study_stays_at_the_top(scene):
    node = ct_node(scene)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
    made = node_from_volume(volume_from_node(node), scene, "copy", reference=node)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(made)) == hierarchy.GetSceneItemID()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(made), slicer.util.arrayFromVolume(node))
