"""The module panel's behaviour in Slicer 5.6.2, 5.8.0 and main: the real SR4ZCT.py and .ui, real MRML, Slicer's real
parameterNodeWrapper of each version, PythonQt-like stand-ins (tests/slicer_panel_model.py). Skips without ../shared."""

from __future__ import annotations

import json
import os
import sys
import time
import types

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import slicer.util  # noqa: E402

import slicer_panel_model as model  # noqa: E402
from SR4ZCTLib.mrml.nodes import ijk_to_ras  # noqa: E402

pytestmark = pytest.mark.skipif(not model.SLICER_PYTHON.is_dir(),
                                reason=f"{model.SLICER_PYTHON} (Slicer's parameterNodeWrapper, shared) not present")
BLOCKED_IMPORTS = model.ROOT / "tests" / "blocked_imports"


@pytest.fixture(params=model.VERSIONS)
def SR4ZCT(request):
    """The module file loaded under one Slicer version's parameterNodeWrapper, with a fresh scene."""
    with model.slicer_version(request.param) as module:
        yield module


def add_volume(name: str, spacing=(0.7, 0.7, 5.0), slices: int = 8, dicom_uid: str | None = None):
    """A small CT-like volume node; dicom_uid makes it look loaded from DICOM (DICOM.instanceUIDs)."""
    array = np.full((slices, 24, 20), -1000, np.int16)
    array[:, 6:18, 4:16] = 40
    array[:, 10:14, 8:12] = 700
    array += np.random.default_rng(len(name)).integers(-5, 5, array.shape).astype(np.int16)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetSpacing(*spacing)
    node.CreateDefaultDisplayNodes()
    if dicom_uid:
        node.SetAttribute("DICOM.instanceUIDs", dicom_uid)
    return node


def open_panel(SR4ZCT) -> model.ModuleHost:
    host = model.ModuleHost(SR4ZCT)
    host.enter()
    return host


def volume_count() -> int:
    return slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")


def assert_clean() -> None:
    assert not model.SLOT_ERRORS, model.SLOT_ERRORS[0]


# ---- opening, picking, leaving, closing ---------------------------------------------------------------------------
def test_panel_opens_with_every_field_connected(SR4ZCT):
    add_volume("CT")
    host = open_panel(SR4ZCT)
    ui = host.ui
    assert_clean()
    assert not model.UNKNOWN_PROPERTIES, f"properties the widget classes do not have: {model.UNKNOWN_PROPERTIES}"
    assert ui.inputSelector.currentNode().GetName() == "CT"
    assert ui.applyButton.enabled and ui.applyButton.text == "Apply"
    assert ui.targetSpacingSpinBox.text == "in-plane" and ui.iterationsSpinBox.text == "preset"
    assert ui.profileComboBox.currentText == "Blurred box" and ui.deviceComboBox.currentText == "Automatic"
    assert "PyTorch" in ui.deviceStatusLabel.text
    assert [entry for entry in ui.outputSelector.items() if entry.lower().startswith("create new")] == [
        "Create new volume on Apply"]


def test_picked_volumes_stick_and_fill_the_acquisition(SR4ZCT):
    slicer.dicomDatabase = model.DicomDatabase({"1.2.3": "3.0"})
    thick = add_volume("thick", (0.7, 0.7, 5.0))
    thin = add_volume("thin", (0.6, 0.6, 2.0), dicom_uid="1.2.3 1.2.4")
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    assert ui.inputSelector.currentNode() is thick and ui.thicknessSpinBox.value == 5.0

    ui.inputSelector.setCurrentNode(thin)  # what a user's pick does
    assert ui.inputSelector.currentNode() is thin and parameters.inputVolume is thin
    assert (parameters.thicknessMm, parameters.incrementMm) == (3.0, 2.0)
    assert (ui.thicknessSpinBox.value, ui.incrementSpinBox.value) == (3.0, 2.0)
    assert ui.sourcesLabel.text.startswith("thickness: from DICOM, increment: from slice positions")
    assert ui.overlapLabel.text == "1.000 mm overlap" and ui.inPlaneSpacingLabel.text == "0.600 x 0.600 mm"

    ui.inputSelector.setCurrentNode(thick)
    assert ui.inputSelector.currentNode() is thick and parameters.inputVolume is thick
    assert (ui.thicknessSpinBox.value, ui.incrementSpinBox.value) == (5.0, 5.0)
    assert ui.sourcesLabel.text.startswith("thickness: assumed, increment: from slice positions")
    assert_clean()


def test_exit_enter_and_scene_close_keep_the_pick(SR4ZCT):
    thick, thin = add_volume("thick", (0.7, 0.7, 5.0)), add_volume("thin", (0.7, 0.7, 2.0))
    host = open_panel(SR4ZCT)
    ui = host.ui
    ui.inputSelector.setCurrentNode(thin)
    ui.deviceComboBox.currentIndex = 1
    host.exit()
    host.enter()
    parameters = host.widget._parameterNode
    assert ui.inputSelector.currentNode() is thin and parameters.inputVolume is thin
    assert (parameters.profile, parameters.preset, parameters.device) == ("blurred-box", "fast", "cpu")
    assert (ui.profileComboBox.currentText, ui.deviceComboBox.currentText) == ("Blurred box", "CPU")
    assert parameters.thicknessMm == 2.0 and ui.thicknessSpinBox.value == 2.0
    ui.inputSelector.setCurrentNode(thick)
    assert parameters.inputVolume is thick and parameters.thicknessMm == 5.0

    slicer.mrmlScene.Clear(0)  # File / Close scene, with the module open
    assert ui.inputSelector.currentNode() is None and ui.sourcesLabel.text == "-"
    first, second = add_volume("first", (0.7, 0.7, 5.0)), add_volume("second", (0.7, 0.7, 2.5))
    parameters = host.widget._parameterNode
    assert parameters.inputVolume is first and parameters.thicknessMm == 5.0
    ui.inputSelector.setCurrentNode(second)  # the first pick after a close
    assert ui.inputSelector.currentNode() is second and parameters.inputVolume is second
    assert parameters.thicknessMm == 2.5 and ui.thicknessSpinBox.value == 2.5
    assert_clean()


def test_users_thickness_survives_exit_enter_and_a_saved_scene(SR4ZCT, tmp_path):
    add_volume("other", (0.7, 0.7, 5.0))
    ct = add_volume("CT", (0.7, 0.7, 2.0))
    host = open_panel(SR4ZCT)
    ui = host.ui
    ui.inputSelector.setCurrentNode(ct)
    ui.thicknessSpinBox.value = 3.25  # the user types the thickness from the scanner protocol
    assert host.widget._parameterNode.thicknessMm == 3.25
    assert ui.sourcesLabel.text.startswith("thickness: your value")
    host.exit()
    host.enter()
    assert host.widget._parameterNode.thicknessMm == 3.25 and ui.thicknessSpinBox.value == 3.25

    scene = slicer.mrmlScene
    for node in (scene.GetFirstNodeByName("other"), ct):
        storage = node.CreateDefaultStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(tmp_path / f"{node.GetName()}.nrrd"))
        assert storage.WriteData(node)
        node.SetAndObserveStorageNodeID(storage.GetID())
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    scene.Clear(0)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Import()  # File / Load scene
    parameters = host.widget._parameterNode
    assert parameters.inputVolume.GetName() == "CT" and ui.inputSelector.currentNode().GetName() == "CT"
    assert parameters.thicknessMm == 3.25 and ui.thicknessSpinBox.value == 3.25, "the saved thickness was replaced"
    assert parameters.incrementMm == 2.0
    assert_clean()


def test_values_outside_the_fields_range_are_clamped_and_shown(SR4ZCT, capfd):
    slicer.dicomDatabase = model.DicomDatabase({"9.9": "80.0"})
    thick = add_volume("thick", (0.7, 0.7, 5.0), dicom_uid="9.9")
    huge = add_volume("huge", (0.7, 0.7, 60.0))
    flat = add_volume("one slice", slices=1)
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    ui.inputSelector.setCurrentNode(thick)
    assert parameters.inputVolume is thick
    assert (parameters.thicknessMm, parameters.incrementMm) == (50.0, 5.0)
    assert "DICOM thickness 80 mm is outside 0.1-50 mm: set to 50 mm" in ui.sourcesLabel.text
    ui.inputSelector.setCurrentNode(huge)  # a slice spacing the engine cannot use: said, not raised
    assert parameters.inputVolume is huge and ui.sourcesLabel.text.startswith("Cannot use this volume")
    assert "60 mm is outside 0.1..50 mm" in ui.sourcesLabel.text
    ui.inputSelector.setCurrentNode(flat)
    assert parameters.inputVolume is flat and ui.sourcesLabel.text.startswith("Cannot use this volume")
    assert_clean()
    assert "Traceback" not in capfd.readouterr().err  # nothing raised in a VTK observer either


def test_the_panels_ranges_are_the_engines(SR4ZCT):
    from SR4ZCTLib.options import RANGES, panel_range, spec

    add_volume("CT")
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    assert set(SR4ZCT.PANEL_RANGES.values()) == {"thickness_mm", "increment_mm", "target_spacing_mm", "iterations", "seed"}
    for spin_box, field in SR4ZCT.PANEL_RANGES.items():
        low, high = RANGES[spec(field).range_name]
        expected = (0 if field in ("target_spacing_mm", "iterations") else low, high)  # 0: "the default" there
        assert panel_range(field) == expected, field
        widget = getattr(ui, spin_box)
        assert (widget.minimum, widget.maximum) == expected, spin_box
        name = widget.property("SlicerParameterName")
        setattr(parameters, name, expected[1])  # the engine's largest value is accepted ...
        assert getattr(parameters, name) == expected[1]
        with pytest.raises(ValueError):  # ... and one beyond it refused, as the engine refuses it
            setattr(parameters, name, expected[1] * 2 + 1)
    assert_clean()


def test_a_closed_dicom_database_is_not_queried(SR4ZCT, caplog):
    slicer.dicomDatabase = model.DicomDatabase({"1.2.3": "3.0"}, is_open=False)
    add_volume("CT", (0.7, 0.7, 2.0), dicom_uid="1.2.3")
    host = open_panel(SR4ZCT)
    assert host.widget._parameterNode.thicknessMm == 2.0
    assert slicer.dicomDatabase.queries == [] and "SQL" not in caplog.text


# ---- Apply, Cancel, results, failures -------------------------------------------------------------------------------
def run_timer_until_done(host, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while host.widget._job is not None and host.widget._job.running:
        assert time.time() < deadline, "the job did not end"
        model.process_events()
        time.sleep(0.1)
    model.process_events()


def start_run(host, iterations: int) -> None:
    host.ui.iterationsSpinBox.value = iterations
    host.ui.deviceComboBox.currentIndex = 1  # cpu
    host.ui.applyButton.click()
    assert_clean()


def composite(view: str):
    return slicer.app.layoutManager().sliceWidget(view).sliceLogic().GetSliceCompositeNode()


def test_apply_runs_a_job_that_adds_exactly_one_node(SR4ZCT):
    ct = add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    before = slicer.util.arrayFromVolume(ct).copy()
    layout = model.open_main_window(slicer.mrmlScene)
    host = open_panel(SR4ZCT)
    assert not host.ui.confidenceCheckBox.checked and not host.widget._parameterNode.confidenceMap
    count = volume_count()
    start_run(host, iterations=3)
    ui = host.ui
    assert ui.applyButton.text == "Cancel" and ui.applyButton.enabled and ui.progressBar.visible
    run_timer_until_done(host)
    assert ui.statusLabel.text == "Done.", ui.statusLabel.text
    assert ui.applyButton.text == "Apply" and not ui.progressBar.visible
    assert volume_count() == count + 1
    result = host.widget._job.result_node
    assert result.GetName() == "CT SR4ZCT" and result.GetSpacing()[2] == pytest.approx(0.7)
    assert ui.metricsLabel.text.startswith("In-plane stand-in check") and ui.deviceStatusLabel.text.startswith("CPU")
    assert "overlay" not in ui.metricsLabel.text and host.widget._job.confidence_node is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), before)
    assert layout.layout == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    assert (composite("Red").GetBackgroundVolumeID(), composite("Yellow").GetBackgroundVolumeID()) == (
        ct.GetID(), result.GetID())
    assert composite("Red").GetForegroundVolumeID() is None and composite("Yellow").GetForegroundVolumeID() is None
    assert_clean()


def test_apply_with_the_confidence_map_adds_it_over_the_result(SR4ZCT):
    ct = add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    model.open_main_window(slicer.mrmlScene)
    host = open_panel(SR4ZCT)
    ui = host.ui
    ui.confidenceCheckBox.click()  # the user ticks it; it stays ticked across leaving the module
    host.exit()
    host.enter()
    assert ui.confidenceCheckBox.checked and host.widget._parameterNode.confidenceMap is True
    count = volume_count()
    start_run(host, iterations=3)
    run_timer_until_done(host)
    assert ui.statusLabel.text == "Done.", ui.statusLabel.text
    assert volume_count() == count + 2
    job = host.widget._job
    result, confidence = job.result_node, job.confidence_node
    assert confidence.GetName() == "CT SR4ZCT confidence"
    assert confidence.GetAttribute("SR4ZCT.confidenceOf") == result.GetID()
    assert SR4ZCT.SR4ZCTLogic.confidenceNode(result) is confidence
    assert slicer.util.arrayFromVolume(confidence).shape == slicer.util.arrayFromVolume(result).shape
    np.testing.assert_allclose(ijk_to_ras(confidence), ijk_to_ras(result), atol=1e-6)
    assert slicer.util.arrayFromVolume(confidence).min() >= 0 and slicer.util.arrayFromVolume(confidence).max() > 0
    colour = confidence.GetDisplayNode().GetColorNode()
    assert colour is not None and colour.GetID() != "vtkMRMLColorTableNodeGrey"
    red, yellow = composite("Red"), composite("Yellow")
    assert (red.GetBackgroundVolumeID(), red.GetForegroundVolumeID()) == (ct.GetID(), None)
    assert (yellow.GetBackgroundVolumeID(), yellow.GetForegroundVolumeID()) == (result.GetID(), confidence.GetID())
    assert yellow.GetForegroundOpacity() == pytest.approx(0.4)
    assert ui.metricsLabel.text.startswith("In-plane stand-in check")
    assert "HU of disagreement" in ui.metricsLabel.text and "less sure" in ui.metricsLabel.text
    assert_clean()


def test_a_rerun_into_the_same_output_shows_its_latest_confidence_map(SR4ZCT):
    from SR4ZCTLib.mrml.nodes import add_confidence_node, volume_from_node
    from SR4ZCTLib.core.volume import Volume

    ct, result = add_volume("CT"), add_volume("CT SR4ZCT")
    model.open_main_window(slicer.mrmlScene)
    logic = SR4ZCT.SR4ZCTLogic()
    assert logic.confidenceNode(result) is None and logic.describeConfidence(None) == ""
    grid = volume_from_node(result)
    first, latest = (add_confidence_node(Volume(np.full(grid.array.shape, value, np.float32), grid.ijk_to_world),
                                         slicer.mrmlScene, result) for value in (5.0, 30.0))
    assert logic.confidenceNode(result) is latest and first is not latest
    logic.showSideBySide(ct, result, logic.confidenceNode(result))
    assert composite("Yellow").GetForegroundVolumeID() == latest.GetID()
    assert composite("Yellow").GetForegroundOpacity() == pytest.approx(0.4)
    assert logic.describeConfidence(latest).startswith("Colour overlay on the result")
    assert "0-30 HU of disagreement" in logic.describeConfidence(latest)


def test_cancel_ends_the_job_and_adds_nothing(SR4ZCT):
    add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    host = open_panel(SR4ZCT)
    host.ui.confidenceCheckBox.checked = True
    count = volume_count()
    start_run(host, iterations=100000)
    job = host.widget._job
    deadline = time.time() + 120
    while job.last_progress is None or job.last_progress.stage != "training":
        assert time.time() < deadline and job.running, job.error
        model.process_events()
        time.sleep(0.05)
    host.ui.applyButton.click()  # the button now reads Cancel
    run_timer_until_done(host, timeout=30)
    assert host.ui.statusLabel.text == "Cancelled: nothing was added."
    assert host.ui.applyButton.text == "Apply" and volume_count() == count
    assert host.widget._job.confidence_node is None and host.widget._job.result_node is None
    assert_clean()


def test_a_failed_job_shows_the_error(SR4ZCT, monkeypatch, caplog):
    add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    host = open_panel(SR4ZCT)
    count = volume_count()
    # The worker's Python has a broken torch (e.g. a missing CUDA library): the run starts and fails there.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(BLOCKED_IMPORTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SR4ZCT_BREAK", "torch")
    start_run(host, iterations=3)
    run_timer_until_done(host, timeout=120)
    status = host.ui.statusLabel.text
    assert status.startswith("Failed: ") and "torch is broken here" in status, status
    assert f"SR4ZCT failed: {host.widget._job.error}" in caplog.text  # errorDisplay logs what it shows
    assert host.ui.applyButton.text == "Apply" and volume_count() == count
    assert_clean()


# ---- a clinician's words, the cost before Apply, how a result was made ------------------------------------
@pytest.fixture
def tiny_memory(monkeypatch):
    """The machine has 10 MiB free (psutil's figure, which the engine reads first)."""
    psutil = pytest.importorskip("psutil")

    class Tiny:
        available = 10 * 2**20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())


def items(comboBox) -> list:
    return [comboBox.itemText(index) for index in range(comboBox.count())]


def test_choices_read_as_words_and_keep_their_values(SR4ZCT):
    add_volume("CT")
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    from SR4ZCTLib.options import DEVICE_CHOICES

    labels = {"auto": "Automatic", "cpu": "CPU", "cuda": "NVIDIA GPU", "mps": "Apple GPU"}
    assert items(ui.deviceComboBox) == [labels[value] for value in DEVICE_CHOICES]
    assert items(ui.presetComboBox) == ["Fast (minutes on a CPU)", "Paper (hours, GPU)"]
    assert items(ui.profileComboBox) == ["Box", "Gaussian", "Blurred box", "Estimate from the scan"]
    for comboBox in (ui.deviceComboBox, ui.presetComboBox, ui.profileComboBox):
        assert all(comboBox.itemData(index, 3) for index in range(comboBox.count())), "every item has a tooltip"
    ui.deviceComboBox.currentIndex = DEVICE_CHOICES.index("cuda")  # the user picks "NVIDIA GPU"
    assert parameters.device == "cuda"
    parameters.preset = "paper"  # from Python: the data value
    assert ui.presetComboBox.currentText == "Paper (hours, GPU)"
    ui.profileComboBox.currentIndex = 3  # the user picks "Estimate from the scan" (issue 16)
    assert parameters.profile == "auto"
    host.exit()
    host.enter()  # connectGui fills the boxes again: the words stay
    assert ui.deviceComboBox.currentText == "NVIDIA GPU" and ui.presetComboBox.currentText == "Paper (hours, GPU)"
    assert parameters.device == "cuda" and parameters.preset == "paper"
    assert_clean()


def test_the_engines_advice_names_the_panels_controls(SR4ZCT):
    add_volume("CT", (0.7, 0.7, 5.0))  # no DICOM thickness: the engine says "Give --thickness"
    host = open_panel(SR4ZCT)
    assert "'Slice thickness'" in host.ui.sourcesLabel.text and "--" not in host.ui.sourcesLabel.text


def test_a_non_hu_volume_is_refused_in_panel_words_and_the_box_lets_it_run(SR4ZCT):
    node = add_volume("MR")
    shape = slicer.util.arrayFromVolume(node).shape
    slicer.util.updateVolumeFromArray(node, np.random.default_rng(1).integers(100, 3000, shape).astype(np.int16))
    host = open_panel(SR4ZCT)
    ui = host.ui
    host.ui.applyButton.click()
    assert host.widget._job is None
    assert ui.statusLabel.text.startswith("Not started:") and "'Not CT in HU' (Advanced)" in ui.statusLabel.text
    assert "--" not in ui.statusLabel.text
    assert len(model.SLOT_ERRORS) == 1 and "'Not CT in HU'" in model.SLOT_ERRORS[0]  # tryWithErrorDisplay re-raises
    model.SLOT_ERRORS.clear()
    ui.allowNonHuCheckBox.click()
    assert host.widget._parameterNode.allowNonHu is True
    start_run(host, iterations=1)
    assert host.widget._job is not None and host.widget._job.running
    host.widget._job.cancel()
    run_timer_until_done(host, timeout=60)


def test_the_cost_is_shown_before_apply_and_follows_the_fields(SR4ZCT):
    add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    cost = ui.costLabel.text
    slices = int(5 * 2.5 / 0.7) + 1
    assert cost.startswith(f"Result: {slices} slices of 24 x 20, every 0.700 mm"), cost
    assert "GiB needed" in cost and "GiB free" in cost and not ui.runAnywayCheckBox.visible
    assert "on CPU" in cost and "on NVIDIA GPU" in cost and "benchmark timings" in cost
    parameters.targetSpacingMm = 1.25
    assert ui.costLabel.text.startswith("Result: 11 slices of 24 x 20, every 1.250 mm")
    ui.deviceComboBox.currentIndex = 1  # CPU only
    assert "on CPU" in ui.costLabel.text and "NVIDIA GPU" not in ui.costLabel.text
    parameters.preset = "paper"
    assert "not measured on CPU" in ui.costLabel.text
    assert_clean()


def test_a_memory_refusal_offers_run_anyway(SR4ZCT, tiny_memory):
    add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    assert "Apply will refuse" in ui.costLabel.text and ui.runAnywayCheckBox.visible
    host.ui.applyButton.click()
    assert host.widget._job is None and "'Run anyway'" in ui.statusLabel.text and "--" not in ui.statusLabel.text
    assert len(model.SLOT_ERRORS) == 1 and "'Run anyway'" in model.SLOT_ERRORS[0]
    model.SLOT_ERRORS.clear()
    ui.runAnywayCheckBox.click()
    assert parameters.force is True
    start_run(host, iterations=1)
    assert host.widget._job is not None and host.widget._job.running
    host.widget._job.cancel()
    run_timer_until_done(host, timeout=60)


def test_a_result_is_selected_replaced_by_the_next_apply_and_says_how_it_was_made(SR4ZCT):
    ct = add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    layout = model.open_main_window(slicer.mrmlScene)
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    ui.layoutCheckBox.click()  # leave the layout as it is
    assert parameters.showSideBySide is False
    count = volume_count()
    start_run(host, iterations=2)
    run_timer_until_done(host)
    result = host.widget._job.result_node
    assert ui.statusLabel.text == "Done." and parameters.outputVolume is result
    assert ui.outputSelector.currentNode() is result
    assert layout.layout is None and composite("Red").GetBackgroundVolumeID() is None, "the layout was changed"
    record = json.loads(result.GetAttribute("SR4ZCT.provenance"))
    assert record["request"]["iterations"] == 2 and record["acquisition"]["increment_source"] == "geometry"
    shown = ui.provenanceLabel.text
    assert shown.startswith("Made by SR4ZCT") and "from slice positions" in shown and "2 iterations" in shown

    ui.seedSpinBox.value = 5
    start_run(host, iterations=2)  # a second Apply replaces the selected result
    run_timer_until_done(host)
    assert host.widget._job.result_node is result and volume_count() == count + 1
    assert json.loads(result.GetAttribute("SR4ZCT.provenance"))["seed"] == 5
    assert "seed 5" in ui.provenanceLabel.text

    other = add_volume("other", (0.7, 0.7, 2.5), slices=6)
    ui.inputSelector.setCurrentNode(other)  # another input: its result is a new volume, this one is kept
    assert parameters.outputVolume is None and ui.outputSelector.currentNode() is None
    assert ui.provenanceLabel.text == ""
    ui.inputSelector.setCurrentNode(ct)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result).shape[1:], (24, 20))
    assert_clean()


def test_a_saved_model_is_listed_for_its_protocol_only_and_applied_without_training(SR4ZCT):
    ct = add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    other = add_volume("finer pixels", (0.5, 0.5, 2.5), slices=6)
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    assert items(ui.modelComboBox) == ["Train a new model"]
    ui.saveModelCheckBox.click()
    start_run(host, iterations=2)
    run_timer_until_done(host)
    assert ui.statusLabel.text == "Done.", ui.statusLabel.text
    library = host.widget.logic.modelLibrary()
    (saved,) = library.models()
    assert (saved.thickness_mm, saved.increment_mm, saved.pixel_mm, saved.profile, saved.preset) == (
        2.5, 2.5, pytest.approx(0.7), "blurred-box", "fast")
    assert str(library.folder).startswith(os.path.dirname(slicer.app.slicerUserSettingsFilePath))
    record = json.loads(host.widget._job.result_node.GetAttribute("SR4ZCT.provenance"))
    assert record["saved_model"] == saved.model_file and record["model"] is None
    assert items(ui.modelComboBox) == ["Train a new model", saved.label()]

    ui.inputSelector.setCurrentNode(other)  # another pixel size: the model does not fit and is not listed
    assert items(ui.modelComboBox) == ["Train a new model"]
    ui.inputSelector.setCurrentNode(ct)
    ui.modelComboBox.currentIndex = 1  # the user picks the saved model
    assert parameters.modelFile == saved.model_file and not ui.saveModelCheckBox.enabled
    assert "no training" in ui.costLabel.text
    ui.thicknessSpinBox.value = 3.0  # another thickness: the model no longer fits, training is back
    assert parameters.modelFile == "" and ui.modelComboBox.currentIndex == 0
    ui.thicknessSpinBox.value = 2.5
    ui.modelComboBox.currentIndex = 1
    parameters.outputVolume = None
    start_run(host, iterations=2)
    run_timer_until_done(host)
    job = host.widget._job
    assert ui.statusLabel.text == "Done." and "training" not in job.stage_started_at
    record = json.loads(job.result_node.GetAttribute("SR4ZCT.provenance"))
    assert record["model"] == saved.model_file and record["saved_model"] is None
    assert "Model reused" in ui.provenanceLabel.text and len(library.models()) == 1
    assert_clean()


def test_a_region_limits_the_run_and_its_cost(SR4ZCT):
    ct = add_volume("CT", (0.7, 0.7, 2.5), slices=8)
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    assert ui.regionSelector.currentNode() is None and "Whole volume" in ui.regionSelector.items()
    whole = ui.costLabel.text
    assert whole.startswith(f"Result: {int(7 * 2.5 / 0.7) + 1} slices of 24 x 20")
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "region")
    centre = ijk_to_ras(ct) @ np.array([10, 7, 3, 1.0])  # at the body's edge: air in the region (the HU check)
    roi.SetXYZ(*centre[:3])
    roi.SetRadiusXYZ(2.2, 2.2, 3.0)  # 7 x 7 voxels in-plane, 3 slices (2.5 mm apart)
    ui.regionSelector.setCurrentNode(roi)
    assert parameters.region is roi
    assert ui.costLabel.text.startswith(f"Result: {int(2 * 2.5 / 0.7) + 1} slices of 7 x 7"), ui.costLabel.text
    roi.SetRadiusXYZ(3.6, 3.6, 3.0)  # the user drags a handle: the read-out follows
    assert ui.costLabel.text.startswith(f"Result: {int(2 * 2.5 / 0.7) + 1} slices of 11 x 11"), ui.costLabel.text
    roi.SetXYZ(500.0, 500.0, 500.0)  # off the volume: said, not raised
    assert "make the region larger or move it onto the volume" in ui.costLabel.text
    roi.SetXYZ(*centre[:3])
    start_run(host, iterations=2)
    run_timer_until_done(host)
    result = host.widget._job.result_node
    assert ui.statusLabel.text == "Done." and slicer.util.arrayFromVolume(result).shape[1:] == (11, 11)
    assert json.loads(result.GetAttribute("SR4ZCT.provenance"))["region"]["roi"] == "region"
    assert_clean()


def test_the_bundled_sample_is_registered_with_sample_data(SR4ZCT, tmp_path, monkeypatch):
    import hashlib
    import urllib.request

    registered = []
    sample_data = types.ModuleType("SampleData")  # Slicer's SampleData module: its registration entry point
    sample_data.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: registered.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    SR4ZCT.SR4ZCT(types.SimpleNamespace())  # Slicer creates the module at startup ...
    [(signal, slot)] = slicer.app.connections
    assert signal == "startupCompleted()" and slot is SR4ZCT.registerSampleData
    slot()  # ... and registers the sample once startup completed
    [sample] = registered
    assert sample["category"] == "SR4ZCT" and os.path.isfile(sample["thumbnailFileName"])
    copy = tmp_path / sample["fileNames"]
    urllib.request.urlretrieve(sample["uris"], copy)  # how SampleData fetches it
    algorithm, digest = sample["checksums"].split(":")
    assert algorithm == "SHA256" and hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    module = SR4ZCT.SR4ZCT(types.SimpleNamespace())
    assert "Limits" in module.parent.helpText and "MLMI 2023" in module.parent.acknowledgementText


def test_export_writes_the_selected_result_as_a_derived_dicom_series(SR4ZCT, tmp_path, monkeypatch):
    import pydicom

    from SR4ZCTLib.io.dicom import read_source_series
    from SR4ZCTLib.io.volumes import read_volume
    from SR4ZCTLib.mrml.nodes import lps_to_ras, node_from_volume, set_provenance, volume_from_node

    chest = model.ROOT.parent / "shared" / "data" / "chest_ct_5mm"
    if not chest.is_dir():
        pytest.skip(f"{chest} (shared real DICOM) not present")
    series = tmp_path / "input"
    series.mkdir()
    for file in sorted(chest.glob("*.dcm"))[:6]:
        (series / file.name).write_bytes(file.read_bytes())
    files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in series.iterdir()}
    slicer.dicomDatabase = model.DicomDatabase({uid: "5.0" for uid in files}, files=files)
    ct = node_from_volume(lps_to_ras(read_volume(series)), slicer.mrmlScene, "CT")
    ct.SetAttribute("DICOM.instanceUIDs", " ".join(files))
    host = open_panel(SR4ZCT)
    ui, parameters = host.ui, host.widget._parameterNode
    assert not ui.exportButton.enabled  # no result selected
    result = node_from_volume(volume_from_node(ct), slicer.mrmlScene, "CT SR4ZCT", reference=ct)
    set_provenance(result, {"sr4zct_version": "test", "acquisition": {"through_plane_axis": "k"}}, ct)
    parameters.outputVolume = result
    assert ui.exportButton.enabled
    monkeypatch.setattr(model.QFileDialog, "answer", str(tmp_path))
    ui.exportButton.click()
    assert_clean()
    folder = tmp_path / "CT SR4ZCT DICOM"
    assert ui.statusLabel.text == f"Exported the derived DICOM series to {folder}"
    derived = read_source_series(folder).header
    assert "DERIVED" in list(derived.ImageType) and derived.StudyInstanceUID == read_source_series(series).header.StudyInstanceUID
    ui.exportButton.click()  # again: the folder exists and is never replaced
    assert "exists" in ui.statusLabel.text and "--overwrite" not in ui.statusLabel.text
    assert len(model.SLOT_ERRORS) == 1


# ---- PyTorch through the PyTorch extension ---------------------------------------------------------------------------
@pytest.fixture
def torch_missing(monkeypatch):
    """PyTorchUtils says torch is not installed; confirmation dialogs answer from `answers` and are counted."""
    monkeypatch.setattr(model.PyTorchUtilsLogic, "installed", False)
    monkeypatch.setattr(model.PyTorchUtilsLogic, "calls", [])
    asked = types.SimpleNamespace(questions=[], answer=True)

    def confirm(text, *args, **kwargs):
        asked.questions.append(text)
        return asked.answer

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
    return asked


def test_torch_install_asks_once(SR4ZCT, torch_missing, monkeypatch):
    add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    host = open_panel(SR4ZCT)
    monkeypatch.setattr(model.PyTorchUtilsLogic, "install_result", None)  # nothing installed: stop there
    host.ui.applyButton.click()
    assert len(torch_missing.questions) == 1 and "PyTorch" in torch_missing.questions[0]
    assert model.PyTorchUtilsLogic.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.1"}]
    assert len(model.SLOT_ERRORS) == 1 and "could not be installed" in model.SLOT_ERRORS[0]


def test_cancelling_the_torch_install_is_a_cancel(SR4ZCT, torch_missing):
    add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    host = open_panel(SR4ZCT)
    torch_missing.answer = False
    host.ui.applyButton.click()
    assert len(torch_missing.questions) == 1 and model.PyTorchUtilsLogic.calls == []
    assert host.ui.statusLabel.text.startswith("Cancelled") and host.widget._job is None
    assert_clean()


def test_an_old_torch_is_refused_with_the_way_out(SR4ZCT, monkeypatch):
    add_volume("CT", (0.7, 0.7, 2.5), slices=6)
    host = open_panel(SR4ZCT)
    real_version = SR4ZCT.importlib.metadata.version
    monkeypatch.setattr(SR4ZCT.importlib.metadata, "version",
                        lambda name: "1.13.1+cu117" if name == "torch" else real_version(name))
    host.ui.applyButton.click()
    assert host.widget._job is None and len(model.SLOT_ERRORS) == 1
    assert "PyTorch 1.13.1+cu117 is installed but SR4ZCT needs 2.1 or newer" in model.SLOT_ERRORS[0]


# ---- the self-test and the panel in Slicer's own Python (no psutil, tqdm, matplotlib) -----------------------------
def run_in_slicer_like_python(code: str, tmp_path, block: str = "psutil,tqdm,matplotlib", broken: str = ""):
    """Run code in a new Python where `block` cannot be imported (nor in processes it starts); returns (result, log)."""
    import subprocess

    log = tmp_path / "imports.log"
    environment = dict(os.environ, SR4ZCT_BLOCK=block, SR4ZCT_BREAK=broken, SR4ZCT_IMPORT_LOG=str(log),
                       PYTHONPATH=os.pathsep.join([str(BLOCKED_IMPORTS), str(model.ROOT / "tests"),
                                                   str(model.MODULE_DIR)]))
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                            timeout=600, cwd=str(tmp_path))
    return result, (log.read_text().split("\n") if log.exists() else [])


SELF_TEST = """
import logging, sys
logging.basicConfig(level=logging.INFO)
for name in ("psutil", "tqdm", "matplotlib"):
    try:
        __import__(name)
        sys.exit(f"{name} is importable: the environment is not Slicer-like")
    except ImportError:
        pass
import slicer, slicer_panel_model as model
with model.slicer_version("{version}") as SR4ZCT:
    model.slicer.app.testing = True
    test = SR4ZCT.SR4ZCTTest()
    test.runTest()
import os
print("SELF-TEST PASSED in", os.getpid())
"""


def test_self_test_passes_without_psutil_tqdm_matplotlib(tmp_path):
    # The self-test uses the logic only, not the parameter-node layer: the oldest supported version stands for all.
    result, attempts = run_in_slicer_like_python(SELF_TEST.replace("{version}", "v5_6_2"), tmp_path)
    assert result.returncode == 0 and "SELF-TEST PASSED" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Test passed" in result.stderr and "Test skipped" not in result.stderr
    own_pid = result.stdout.split("SELF-TEST PASSED in")[-1].split()[0]
    worker_pids = {line.split()[0] for line in attempts if line} - {own_pid}
    assert attempts, "nothing tried to import the blocked packages: the check would be empty"
    assert len(worker_pids) >= 1, f"the worker process never met the blocker: {attempts}"


PANEL_WITHOUT_TORCH = """
import slicer, slicer_panel_model as model, numpy as np, slicer.util
with model.slicer_version("main") as SR4ZCT:
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(node, np.full((6, 20, 16), 40, np.int16))
    host = model.ModuleHost(SR4ZCT)
    host.enter()
    assert not model.SLOT_ERRORS, model.SLOT_ERRORS
    print("OPENED", host.ui.inputSelector.currentNode().GetName(), host.ui.applyButton.enabled, repr(host.ui.deviceStatusLabel.text))
"""


def test_panel_opens_with_a_broken_torch_and_does_not_import_it(tmp_path):
    result, attempts = run_in_slicer_like_python(PANEL_WITHOUT_TORCH, tmp_path, broken="torch")
    assert result.returncode == 0 and "OPENED CT True 'PyTorch " in result.stdout, result.stderr[-3000:]
    assert not [line for line in attempts if line.endswith(" torch")], attempts
