"""The panel in a clinician's words, its cost read-out and what it keeps of a result, in Slicer 5.6.2, 5.8.0 and main
(the panel model: tests/slicer_panel_model.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import slicer.util  # noqa: E402

import slicer_panel_model as model  # noqa: E402
from test_slicer_panel import (SR4ZCT, add_volume, assert_clean, composite, open_panel,  # noqa: E402,F401
                               run_timer_until_done, start_run, volume_count)

pytestmark = pytest.mark.skipif(not model.SLICER_PYTHON.is_dir(),
                                reason=f"{model.SLICER_PYTHON} (Slicer's parameterNodeWrapper, shared) not present")


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
    assert items(ui.profileComboBox) == ["Box", "Gaussian"]
    for comboBox in (ui.deviceComboBox, ui.presetComboBox, ui.profileComboBox):
        assert all(comboBox.itemData(index, 3) for index in range(comboBox.count())), "every item has a tooltip"
    ui.deviceComboBox.currentIndex = DEVICE_CHOICES.index("cuda")  # the user picks "NVIDIA GPU"
    assert parameters.device == "cuda"
    parameters.preset = "paper"  # from Python: the data value
    assert ui.presetComboBox.currentText == "Paper (hours, GPU)"
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
