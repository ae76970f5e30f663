"""The confidence map: |coronal - sagittal| (HU, smoothed) on the output grid, in the CLI, the report and MRML."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from SR4ZCTLib import Acquisition, cli
from SR4ZCTLib.core.confidence import SMOOTHING_VOXELS
from SR4ZCTLib.enhance import EnhanceOptions, enhance
from SR4ZCTLib.core.forward import simulate_thick_slices
from SR4ZCTLib.core.phantom import make_phantom
from SR4ZCTLib.core.volume import Volume, read_through_plane_geometry
from SR4ZCTLib.io.volumes import read_volume, write_volume

from conftest import oblique_matrix

ACQUISITION = Acquisition(2.5, 1.25)


@pytest.fixture(scope="module")
def case():
    """A float phantom (so that no rounding hides the passes), oblique geometry, one short training."""
    truth = make_phantom((41, 32, 28), 0.5, seed=4, noise_hu=5.0)
    thick = simulate_thick_slices(truth, 0, 0.5, ACQUISITION).numpy().astype(np.float32)
    volume = Volume(thick, oblique_matrix(spacing=(0.5, 0.5, ACQUISITION.increment_mm)))
    geometry, _ = read_through_plane_geometry(volume, thickness_mm=ACQUISITION.thickness_mm)
    result = enhance(volume, geometry, EnhanceOptions(iterations=30, device="cpu", confidence=True, target_spacing_mm=0.4))
    return volume, geometry, result


def test_confidence_is_the_smoothed_difference_of_the_two_passes(case):
    volume, geometry, result = case
    single = {view: enhance(volume, geometry, EnhanceOptions(device="cpu", views=(view,), consistency=False,
                                                             target_spacing_mm=0.5), model=result.model).volume.array
              for view in ("coronal", "sagittal")}  # each pass alone, on the network's own 0.5 mm grid
    expected = gaussian_filter(np.abs(single["coronal"] - single["sagittal"]), SMOOTHING_VOXELS, mode="nearest")
    ours = enhance(volume, geometry, EnhanceOptions(device="cpu", confidence=True, target_spacing_mm=0.5),
                   model=result.model).confidence
    assert ours.array.shape == expected.shape and ours.array.dtype == np.float32
    assert np.abs(ours.array - expected).max() < 1e-2 * max(1.0, float(expected.max()))
    assert float(expected.max()) > 1.0  # the passes do differ: the test is not comparing zeros


def test_confidence_lies_on_the_output_grid(case):
    _, _, result = case
    confidence = result.confidence
    assert confidence.array.shape == result.volume.array.shape
    assert np.allclose(confidence.ijk_to_world, result.volume.ijk_to_world)
    assert confidence.array.min() >= 0.0 and np.isfinite(confidence.array).all()


def test_cli_writes_the_map_and_the_report_shows_it(tmp_path, small_ct, capsys):
    source = write_volume(Volume(small_ct, Volume.matrix_from((1, 2, 3), (0.8, 0.8, 2.5), np.eye(3))), tmp_path / "ct.nrrd")
    common = ["--iterations", "2", "--device", "cpu", "--progress", "none", "--thickness", "2.5"]
    assert cli.main(["enhance", str(source), "-o", str(tmp_path / "plain.nrrd"), "--report", str(tmp_path / "plain"),
                     *common]) == 0
    code = cli.main(["enhance", str(source), "-o", str(tmp_path / "o.nrrd"), "--confidence", str(tmp_path / "c.nrrd"),
                     "--report", str(tmp_path / "report"), *common])
    assert code == 0, capsys.readouterr().err
    output, confidence = read_volume(tmp_path / "o.nrrd"), read_volume(tmp_path / "c.nrrd")
    assert confidence.array.shape == output.array.shape and confidence.array.dtype == np.float32
    assert np.allclose(confidence.ijk_to_world, output.ijk_to_world)
    import matplotlib.image

    width = matplotlib.image.imread(str(tmp_path / "report" / "report.png")).shape[1]
    assert width > matplotlib.image.imread(str(tmp_path / "plain" / "report.png")).shape[1] * 1.2  # a fourth column


@pytest.mark.parametrize("target", ["input", "output", "exists", "bad-suffix"])
def test_bad_confidence_paths_are_refused_before_the_run(tmp_path, small_ct, capsys, target):
    source = write_volume(Volume(small_ct, Volume.matrix_from((0, 0, 0), (0.8, 0.8, 2.5), np.eye(3))), tmp_path / "ct.nrrd")
    confidence = {"input": source, "output": tmp_path / "o.nrrd", "exists": tmp_path / "c.nrrd",
                  "bad-suffix": tmp_path / "c.png"}[target]
    if target == "exists":
        confidence.write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli.main(["enhance", str(source), "-o", str(tmp_path / "o.nrrd"), "--confidence", str(confidence),
                     "--iterations", "2", "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_confidence_node_is_coloured_linked_and_filed_in_the_study():
    slicer = pytest.importorskip("slicer")
    from SR4ZCTLib.mrml.nodes import add_confidence_node, node_from_volume

    scene = slicer.mrmlScene = slicer.vtkMRMLScene()
    colours = slicer.vtkMRMLColorLogic()
    colours.SetMRMLScene(scene)
    colours.AddDefaultColorNodes()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "study")
    matrix = Volume.matrix_from((1, 2, 3), (0.5, 0.5, 0.8), np.eye(3))
    result = node_from_volume(Volume(np.zeros((4, 5, 6), np.int16), matrix), scene, "result")
    hierarchy.CreateItem(study, result)
    disagreement = np.arange(120, dtype=np.float32).reshape(4, 5, 6)
    node = add_confidence_node(Volume(disagreement, matrix), scene, result)
    assert node.GetAttribute("SR4ZCT.confidenceOf") == result.GetID()
    assert np.array_equal(slicer.util.arrayFromVolume(node), disagreement)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() != "vtkMRMLColorTableNodeGrey" and display.GetColorNode() is not None
    assert display.GetWindowLevelMin() == 0.0 and display.GetWindowLevelMax() > 100
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    scene.Clear(1)


def test_a_confidence_node_that_cannot_be_linked_is_not_left_behind():
    slicer = pytest.importorskip("slicer")
    from SR4ZCTLib.mrml.nodes import add_confidence_node

    scene = slicer.mrmlScene = slicer.vtkMRMLScene()
    volume = Volume(np.ones((3, 4, 5), np.float32), Volume.matrix_from((0, 0, 0), (1, 1, 1), np.eye(3)))
    with pytest.raises(AttributeError):
        add_confidence_node(volume, scene, None)  # no result node to link it to
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    scene.Clear(1)


def test_result_node_is_filed_in_the_input_study_for_dicom_export():
    """Slicer's DICOM export takes patient and study from the node's parents in the subject hierarchy."""
    slicer = pytest.importorskip("slicer")
    from SR4ZCTLib.mrml.nodes import node_from_volume, place_beside

    scene = slicer.mrmlScene = slicer.vtkMRMLScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(patient, "study")
    hierarchy.SetItemAttribute(study, "DICOM.StudyInstanceUID", "1.2.3.4")
    volume = Volume(np.zeros((3, 4, 5), np.int16), Volume.matrix_from((0, 0, 0), (1, 1, 1), np.eye(3)))
    source = node_from_volume(volume, scene, "CT")
    hierarchy.CreateItem(study, source)
    result = node_from_volume(volume, scene, "CT SR4ZCT")
    place_beside(result, source)
    item = hierarchy.GetItemByDataNode(result)
    assert hierarchy.GetItemParent(item) == study
    assert hierarchy.GetItemAttribute(hierarchy.GetItemParent(item), "DICOM.StudyInstanceUID") == "1.2.3.4"
    lonely = node_from_volume(volume, scene, "no study")
    place_beside(lonely, node_from_volume(volume, scene, "not in the hierarchy"))  # nothing to follow: no change
    assert not hierarchy.GetItemByDataNode(lonely) or hierarchy.GetItemParent(
        hierarchy.GetItemByDataNode(lonely)) == hierarchy.GetSceneItemID()
    scene.Clear(1)
