import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import sys
import time
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    parameterNodeWrapper,
    Choice,
    WithinRange,
)

from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode

from SR4ZCTLib.options import DEFAULT_PROFILE, DEVICE_CHOICES, PRESET_NAMES, PROFILE_CHOICES, RANGES, panel_range  # standard library only
from SR4ZCTLib.mrml.wording import choice_label, panel_text, source_label  # standard library only


#
# SR4ZCT
#


class SR4ZCT(ScriptedLoadableModule):
    """Self-supervised through-plane resolution enhancement for thick-slice CT."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SR4ZCT")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["SR4ZCT developers"]
        self.parent.helpText = _("""
Makes thick-slice CT sharper through-plane (coronal and sagittal views) with no training data but the scan
itself: a network learns, from the scan's own sharp axial images, to undo a simulation of exactly this scan's
slice thickness, increment and overlap, then enhances every coronal and sagittal slice.
<p>Pick the CT volume, check slice thickness and increment (filled from DICOM and the slice positions; the panel
says where each number came from), read the cost, and Apply. Optional: a region (markups ROI), a saved model of
the same protocol (no training), the confidence map. Each result keeps how it was made (Made with).</p>
<p>Limits: for CT in Hounsfield units with a uniform slice increment and no gantry tilt; the result is a
computed estimate, not a measurement: for reading alongside the acquired images, not for diagnosis on its own.
The validation figure is the in-plane stand-in check, not a measure of the through-plane result.</p>
<p>Try it: File / Download Sample Data / SR4ZCT / SR4ZCTChestCT5mm. The documentation is the README.md file of
the extension's source (section "3D Slicer").</p>
""")
        self.parent.acknowledgementText = _("""
Method: J. Shi, D. M. Pelt, K. J. Batenburg, "SR4ZCT: Self-supervised Through-plane Resolution Enhancement for
CT Images with Arbitrary Resolution and Overlap", MLMI 2023, LNCS 14349, pp. 52-61.
Sample data: Lung-PET-CT-Dx (TCIA, CC BY 4.0): Li, P. et al., A Large-Scale CT and PET/CT Dataset for Lung Cancer
Diagnosis, The Cancer Imaging Archive, 2020.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: the bundled 5 mm chest CT in the Sample Data module
#

SAMPLE_NAME = "SR4ZCTChestCT5mm"
SAMPLE_FILE = os.path.join(os.path.dirname(__file__), "SR4ZCTLib", "data", "chest_ct_5mm_crop.nrrd")
SAMPLE_SHA256 = "f21ea1056969f0a23a2b70c24c852657fe8742e606f3b975db21ebb337bb4403"  # of SAMPLE_FILE (a test checks)


def registerSampleData() -> None:
    """List the bundled sample under File / Download Sample Data (category SR4ZCT); it is copied from the
    extension's own folder (a file:// address), checked against its SHA-256."""
    import pathlib

    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SR4ZCT", sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", f"{SAMPLE_NAME}.png"),
        uris=pathlib.Path(SAMPLE_FILE).as_uri(), fileNames=f"{SAMPLE_NAME}.nrrd",
        checksums=f"SHA256:{SAMPLE_SHA256}", nodeNames=SAMPLE_NAME)


#
# SR4ZCTParameterNode
#

PANEL_RANGES = {"thicknessSpinBox": "thickness_mm", "incrementSpinBox": "increment_mm",  # spin box: RunOptions field
                "targetSpacingSpinBox": "target_spacing_mm", "iterationsSpinBox": "iterations", "seedSpinBox": "seed"}
THICKNESS_RANGE_MM = RANGES["thickness"]  # the engine's range; a DICOM thickness outside it is clamped, with a note
MINIMUM_TORCH_VERSION = "2.1"
CONFIDENCE_OPACITY = 0.4  # the confidence map over the result: the anatomy stays readable beneath it
CHOICE_COMBO_BOXES = {"deviceComboBox": ("device", DEVICE_CHOICES), "presetComboBox": ("preset", PRESET_NAMES),
                      "profileComboBox": ("profile", PROFILE_CHOICES)}  # combo box: (option, data values in item order)


@parameterNodeWrapper
class SR4ZCTParameterNode:
    """
    The parameters needed by module.

    inputVolume - The thick-slice CT volume.
    thicknessMm - Slice thickness (FWHM of the slice profile).
    incrementMm - Distance between slice centres.
    profile - Slice profile model.
    preset - Training schedule ("fast" on CPUs, "paper" as published).
    device - auto, cpu, cuda or mps (Apple silicon).
    targetSpacingMm - Output slice spacing; 0 means the in-plane spacing.
    iterations - Training iterations; 0 means the preset's.
    seed - Random seed (CPU runs are reproducible).
    outputVolume - Where the result goes; none creates a new node. Set to the result after a run, so the next
        Apply replaces it unless another one is chosen (a new input starts a new one).
    acquisitionVolume - The input that thickness and increment were filled from (saved with the scene, so a
        reloaded scene keeps the user's values).
    confidenceMap - Also add where the coronal and sagittal passes disagree, as a colour overlay on the result.
        Off by default: the result is read as plain grey values, and the map costs one more volume of memory.
    allowNonHu - Enhance a volume that is not CT in Hounsfield units (with a percentile intensity mapping).
    force - Run anyway when the memory estimate exceeds the free memory.
    showSideBySide - After a run, show input and result side by side (changes the layout and the Red and Yellow
        views); off leaves the layout as it is.
    saveModel - Save the trained model in the model library (keyed by its protocol) for the next scan.
    modelFile - A library model to apply instead of training ("" trains a new one); the model combo box sets it.
    region - Enhance only the voxels inside this markups ROI (cropped on the input's own grid); none: the whole volume.
    exportToDatabase - Export as DICOM also adds the derived series to Slicer's DICOM database.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    thicknessMm: Annotated[float, WithinRange(*panel_range("thickness_mm"))] = 1.0
    incrementMm: Annotated[float, WithinRange(*panel_range("increment_mm"))] = 1.0
    profile: Annotated[str, Choice(list(PROFILE_CHOICES))] = DEFAULT_PROFILE
    preset: Annotated[str, Choice(list(PRESET_NAMES))] = "fast"
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    targetSpacingMm: Annotated[float, WithinRange(*panel_range("target_spacing_mm"))] = 0.0
    iterations: Annotated[int, WithinRange(*panel_range("iterations"))] = 0
    seed: Annotated[float, WithinRange(*panel_range("seed"))] = 0
    outputVolume: vtkMRMLScalarVolumeNode
    acquisitionVolume: vtkMRMLScalarVolumeNode
    confidenceMap: bool = False
    allowNonHu: bool = False
    force: bool = False
    showSideBySide: bool = True
    saveModel: bool = False
    modelFile: str = ""
    region: vtkMRMLMarkupsROINode
    exportToDatabase: bool = False


#
# SR4ZCTWidget
#


class SR4ZCTWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel. Thin: all computation is in SR4ZCTLogic and SR4ZCTLib."""

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self._observedInput = None  # the input the read-outs describe (observed: it may get its voxels later)
        self._observedInputState = None  # its grid and DICOM link when last read
        self._acquisition = None  # what readAcquisition said about it (or why it cannot be used)
        self._observedRegion = None  # the ROI the cost read-out describes (observed: the user moves it)

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SR4ZCT.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets (the .ui connects mrmlSceneChanged to each selector's setMRMLScene).
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # The spin boxes' limits are the engine's (SR4ZCTLib.options), 0 meaning "the default" where it has one.
        for spinBox, option in PANEL_RANGES.items():
            getattr(self.ui, spinBox).setRange(*panel_range(option))

        self.logic = SR4ZCTLogic()

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons; the read-outs follow the parameter node (onParameterNodeModified), never a widget's signal:
        # a slot on a widget signal runs before the node has the widget's new value.
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self._listedModels = []  # the library models the model combo box lists, in its order after "Train a new model"
        self._listingModels = False
        self.ui.progressBar.setVisible(False)
        self.ui.deviceStatusLabel.text = self.logic.torchDescription()  # no torch import: the panel opens without it

        self._timer = qt.QTimer()
        self._timer.setInterval(300)
        self._timer.connect("timeout()", self.onJobTimer)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None and self._job.running:
            self._job.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._observeInput(None)
        self._observeRegion(None)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        if self._job is not None and self._job.running:
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[SR4ZCTParameterNode]) -> None:
        """Set and observe parameter node; the GUI follows it through connectGui, the read-outs through its observer."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._observeInput(None)
        self._observeRegion(None)
        if self._parameterNode:
            self._parameterNodeGuiTag = self._connectGui()
            # Observed after connectGui, so the widgets already show the node's values when this runs.
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()
        else:
            self._updateReadouts()

    def _connectGui(self):
        """What connectGui(self.ui) does, but with a tag on every Slicer version.

        In the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each ui element that needs
        connection. connectGui returns no tag before Slicer 5.9, so disconnectGui could not undo it and every
        enter() would add a second set of connections (a re-connected combo box is cleared, and the old
        connection then writes its last choice into the node); connectParametersToGui returns its tag everywhere.
        """
        widgets = {widget.property("SlicerParameterName"): widget for widget in vars(self.ui).values()
                   if widget.property("SlicerParameterName")}
        tag = self._parameterNode.connectParametersToGui(widgets)
        self._labelChoices()
        return tag

    def _labelChoices(self) -> None:
        """The combo boxes show words and tooltips; the parameter node keeps the data values ("auto", "cpu", ...).

        connectGui fills each box with the values, in the Choice's order, and reads the current index: relabelling
        the items keeps that mapping.
        """
        for comboBox, (option, values) in CHOICE_COMBO_BOXES.items():
            widget = getattr(self.ui, comboBox)
            for index, value in enumerate(values):
                label, tip = choice_label(option, value)
                widget.setItemText(index, _(label))
                widget.setItemData(index, _(tip), qt.Qt.ToolTipRole)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """A new input (picked, or set from Python) fills thickness and increment; the read-outs follow the node."""
        parameters = self._parameterNode
        if parameters is None:
            return
        inputVolume = parameters.inputVolume
        if inputVolume is not self._observedInput:
            self._observeInput(inputVolume)
            self._readInput()
            self._forgetOutputOfAnotherInput()
        if parameters.region is not self._observedRegion:
            self._observeRegion(parameters.region)
        self._updateReadouts()
        self._checkCanApply()

    def _observeRegion(self, region) -> None:
        """Follow this ROI (None: none) instead of the previous one: moving or resizing it updates the cost."""
        if self._observedRegion is not None:
            self.removeObserver(self._observedRegion, vtk.vtkCommand.ModifiedEvent, self.onRegionModified)
        if region is not None:
            self.addObserver(region, vtk.vtkCommand.ModifiedEvent, self.onRegionModified)
        self._observedRegion = region

    def onRegionModified(self, caller=None, event=None) -> None:
        """The ROI moved or changed size."""
        self._updateReadouts()

    def _forgetOutputOfAnotherInput(self) -> None:
        """A result of another input is not replaced by this input's run: the output goes back to a new volume."""
        from SR4ZCTLib.mrml.nodes import INPUT_ATTRIBUTE

        parameters = self._parameterNode
        output = parameters.outputVolume
        madeFrom = output.GetAttribute(INPUT_ATTRIBUTE) if output else None
        if madeFrom and madeFrom != _nodeID(parameters.inputVolume):
            parameters.outputVolume = None

    def onInputVolumeModified(self, caller=None, event=None) -> None:
        """The input got its voxels, another grid or its DICOM link (nodes are often added before their data)."""
        if _inputState(self._observedInput) != self._observedInputState:
            self._readInput()
            self._updateReadouts()
            self._checkCanApply()

    def _observeInput(self, inputVolume) -> None:
        """Observe this input (None: none) instead of the previous one; its read-outs are to be read again."""
        for node in (self._observedInput, inputVolume):
            for event in (vtk.vtkCommand.ModifiedEvent, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent):
                observed = self.hasObserver(node, event, self.onInputVolumeModified) if node else False
                if node is self._observedInput and observed:
                    self.removeObserver(node, event, self.onInputVolumeModified)
                elif node is inputVolume and node and not observed:
                    self.addObserver(node, event, self.onInputVolumeModified)
        self._observedInput, self._observedInputState, self._acquisition = inputVolume, None, None

    def _readInput(self) -> None:
        """Read the observed input; fill thickness and increment once per input (not again for a reloaded scene)."""
        inputVolume, parameters = self._observedInput, self._parameterNode
        self._observedInputState = _inputState(inputVolume)
        self._acquisition = self.logic.readAcquisition(inputVolume) if inputVolume else None
        if self._acquisition is not None and self._acquisition.usable and \
                _nodeID(parameters.acquisitionVolume) != _nodeID(inputVolume):
            with slicer.util.NodeModify(parameters):  # one Modified event, which calls onParameterNodeModified
                parameters.thicknessMm = self._acquisition.thickness_mm
                parameters.incrementMm = self._acquisition.increment_mm
                parameters.acquisitionVolume = inputVolume

    def _updateReadouts(self) -> None:
        """In-plane spacing, overlap, and where thickness and increment came from."""
        parameters, acquisition = self._parameterNode, self._acquisition
        self._updateModelChoices()
        self._updateCost()
        self.ui.provenanceLabel.text = self.logic.describeProvenance(parameters.outputVolume if parameters else None)
        self.ui.exportButton.enabled = bool(self.ui.provenanceLabel.text)  # an SR4ZCT result is selected
        if parameters is None or not parameters.inputVolume:
            self.ui.inPlaneSpacingLabel.text = "-"
            self.ui.sourcesLabel.text = "-"
        elif acquisition is None or not acquisition.usable:
            self.ui.inPlaneSpacingLabel.text = "-"
            self.ui.sourcesLabel.text = _("Cannot use this volume: {error}").format(
                error=panel_text(acquisition.error) if acquisition else "-")
        else:
            spacing = acquisition.in_plane_spacing_mm
            self.ui.inPlaneSpacingLabel.text = f"{spacing[0]:.3f} x {spacing[1]:.3f} mm"
            sources = [_sourceText(_("thickness"), parameters.thicknessMm, acquisition.thickness_mm,
                                   acquisition.thickness_source),
                       _sourceText(_("increment"), parameters.incrementMm, acquisition.increment_mm,
                                   acquisition.increment_source)]
            self.ui.sourcesLabel.text = "\n".join([", ".join(sources)] + [panel_text(w) for w in acquisition.warnings])
        self.updateOverlapLabel()

    def _updateModelChoices(self) -> None:
        """List the library's models that fit the picked volume's acquisition; a chosen one that no longer fits goes."""
        parameters, acquisition = self._parameterNode, self._acquisition
        usable = parameters is not None and parameters.inputVolume and acquisition is not None and acquisition.usable
        models = self.logic.fittingModels(parameters.thicknessMm, parameters.incrementMm,
                                          min(acquisition.in_plane_spacing_mm), parameters.profile) if usable else []
        chosen = parameters.modelFile if parameters else ""
        files = [model.model_file for model in models]
        if chosen and chosen not in files:
            parameters.modelFile = chosen = ""  # calls this again through the node's observer
        self._listingModels = True
        try:
            self.ui.modelComboBox.clear()
            self.ui.modelComboBox.addItem(_("Train a new model"))
            for model in models:
                self.ui.modelComboBox.addItem(model.label())
            self.ui.modelComboBox.currentIndex = files.index(chosen) + 1 if chosen else 0
        finally:
            self._listingModels = False
        self._listedModels = files
        self.ui.saveModelCheckBox.enabled = not chosen

    def onModelChosen(self, index: int) -> None:
        """The user picked a library model (or "Train a new model"): kept in the parameter node."""
        if self._listingModels or self._parameterNode is None:
            return
        self._parameterNode.modelFile = self._listedModels[index - 1] if 0 < index <= len(self._listedModels) else ""

    def _updateCost(self) -> None:
        """Result size and spacing, memory needed against free, time on the chosen device; 'Run anyway' when refused."""
        parameters, acquisition = self._parameterNode, self._acquisition
        usable = parameters is not None and parameters.inputVolume and acquisition is not None and acquisition.usable
        try:
            shape = self.logic.regionShape(parameters.inputVolume, parameters.region) if usable else None
        except ValueError as error:  # a region off the volume: said, not raised
            self.ui.costLabel.text = panel_text(str(error))
            self.ui.runAnywayCheckBox.visible = bool(parameters.force)
            return
        cost = self.logic.estimateCost(acquisition, parameters.incrementMm, parameters.targetSpacingMm or None,
                                       parameters.preset, parameters.iterations or None,
                                       train=not parameters.modelFile, shape=shape) if usable else None
        self.ui.costLabel.text = self.logic.describeCost(cost, parameters.device) if cost else "-"
        self.ui.runAnywayCheckBox.visible = bool(cost is not None and cost.refused or parameters and parameters.force)

    def _checkCanApply(self) -> None:
        """Apply needs an input; during a run the button is Cancel."""
        if self._job is not None and self._job.running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the run; nothing is added to the scene.")
            self.ui.applyButton.enabled = True
        elif self._parameterNode and self._parameterNode.inputVolume:
            self.ui.applyButton.text = _("Apply")
            self.ui.applyButton.toolTip = _("Train on this scan's own axial images and enhance it.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            self.ui.applyButton.toolTip = _("Select an input volume")
            self.ui.applyButton.enabled = False

    def updateOverlapLabel(self) -> None:
        """Overlap (or gap) that the parameter node's thickness and increment imply."""
        if self._parameterNode is None:
            self.ui.overlapLabel.text = "-"
            return
        overlap = self._parameterNode.thicknessMm - self._parameterNode.incrementMm
        self.ui.overlapLabel.text = (_("{value:.3f} mm overlap").format(value=overlap) if overlap >= 0
                                     else _("{value:.3f} mm gap (information in the gaps is lost)").format(value=-overlap))

    def onApplyButton(self) -> None:
        """Start a run, or cancel the one in progress."""
        if self._job is not None and self._job.running:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start SR4ZCT."), waitCursor=True):
            if not self.logic.setupPythonRequirements():
                self.ui.statusLabel.text = _("Cancelled: the required Python packages are not installed; "
                                             "nothing was started.")
                return
            self.ui.deviceStatusLabel.text = self.logic.deviceDescription()
            parameters = self._parameterNode
            self.ui.metricsLabel.text = ""
            try:
                self._job = self.logic.process(
                    parameters.inputVolume, parameters.outputVolume,
                    thicknessMm=parameters.thicknessMm, incrementMm=parameters.incrementMm, profile=parameters.profile,
                    preset=parameters.preset, iterations=parameters.iterations or None,
                    targetSpacingMm=parameters.targetSpacingMm or None, device=parameters.device,
                    seed=int(parameters.seed), allowNonHu=parameters.allowNonHu, force=parameters.force,
                    model=parameters.modelFile or None, saveModel=parameters.saveModel and not parameters.modelFile,
                    region=parameters.region,
                    confidence=parameters.confidenceMap, waitForCompletion=False, logCallback=logging.info,
                )
            except (ValueError, RuntimeError) as error:  # the engine's InputError, ResourceError: the panel's words
                self.ui.statusLabel.text = _("Not started: {error}").format(error=panel_text(str(error)))
                raise RuntimeError(panel_text(str(error))) from None
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting...")
            self._timer.start()
            self._checkCanApply()

    def onExportButton(self) -> None:
        """Write the selected result as a derived DICOM series into a new folder in the one the user picks."""
        with slicer.util.tryWithErrorDisplay(_("Failed to export the DICOM series."), waitCursor=True):
            parent = qt.QFileDialog.getExistingDirectory(None, _("Folder for the derived DICOM series"))
            if not parent:
                return
            result = self._parameterNode.outputVolume
            try:
                written = self.logic.exportDicom(result, os.path.join(parent, f"{result.GetName()} DICOM"),
                                                 addToDatabase=self._parameterNode.exportToDatabase)
            except (ValueError, RuntimeError) as error:
                self.ui.statusLabel.text = _("Not exported: {error}").format(error=panel_text(str(error)))
                raise RuntimeError(panel_text(str(error))) from None
            self.ui.statusLabel.text = _("Exported the derived DICOM series to {folder}").format(folder=written)

    def onJobTimer(self) -> None:
        """Drain the worker's progress (Slicer stays responsive: nothing here blocks)."""
        job = self._job
        if job is None:
            self._timer.stop()
            return
        running = job.poll()
        progress = job.last_progress
        if progress is not None:
            self.ui.progressBar.value = int(100 * progress.fraction)
            left = job.seconds_left()
            timeLeft = _(", about {seconds:.0f} s left in this stage").format(seconds=left) if left else ""
            self.ui.statusLabel.text = f"{progress.stage}: {progress.message}{timeLeft}"
        if running:
            return
        self._timer.stop()
        self.ui.progressBar.setVisible(False)
        self._checkCanApply()
        state = job.state.value
        if job.result_node is not None:
            self.ui.statusLabel.text = _("Done.")
            self.ui.metricsLabel.text = "\n".join(filter(None, [self.logic.describeMetrics(job.metrics),
                                                                self.logic.describeConfidence(job.confidence_node)]))
            if job.metrics is not None and job.metrics.device:
                self.ui.deviceStatusLabel.text = _("{device} (last run)").format(device=job.metrics.device)
            if self._parameterNode is not None:  # the next Apply replaces this result unless another is chosen
                self._parameterNode.outputVolume = job.result_node
                self._updateReadouts()
            if self._parameterNode is None or self._parameterNode.showSideBySide:
                self.logic.showSideBySide(job.input_node, job.result_node, job.confidence_node)
        elif state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled: nothing was added.")
        else:
            error = panel_text(job.error or "")
            self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
            slicer.util.errorDisplay(_("SR4ZCT failed: {error}").format(error=error))


def _nodeID(node) -> Optional[str]:
    return node.GetID() if node else None


def _inputState(node) -> Optional[tuple]:
    """What readAcquisition depends on: the voxel grid, its placement and the DICOM link."""
    if not node:
        return None
    image, matrix = node.GetImageData(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return (image.GetDimensions() if image else None, tuple(matrix.GetElement(r, c) for r in range(3) for c in range(4)),
            node.GetAttribute("DICOM.instanceUIDs"))


def _versionTuple(version: str) -> tuple:
    """(major, minor) of a version such as '2.1.0+cu121'."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:2])


def _sourceText(name: str, value: float, filled: float, source: str) -> str:
    """'thickness: from DICOM', or 'thickness: your value' once it differs from what the volume said."""
    edited = abs(value - filled) > 5e-4
    return _("{name}: {source}").format(name=name, source=_(source_label("user" if edited else source)))


#
# SR4ZCTLogic
#


class SR4ZCTLogic(ScriptedLoadableModuleLogic):
    """Runs SR4ZCT on volume nodes; usable from the Python console without the widget:

    logic = slicer.util.getModuleLogic("SR4ZCT")  # or SR4ZCT.SR4ZCTLogic()
    outputNode = logic.process(getNode("CT"), thicknessMm=3.0, incrementMm=2.0, confidence=True)
    logic.showSideBySide(getNode("CT"), outputNode, logic.confidenceNode(outputNode))
    """

    def __init__(self, modelLibraryFolder: Optional[str] = None) -> None:
        """modelLibraryFolder: where saved models go (default: SR4ZCT/models beside Slicer's user settings)."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.modelLibraryFolder = modelLibraryFolder

    def modelLibrary(self):
        """The model library (SR4ZCTLib.mrml.library.ModelLibrary) under Slicer's user folder or the given one."""
        from SR4ZCTLib.mrml.library import ModelLibrary

        folder = self.modelLibraryFolder or os.path.join(os.path.dirname(slicer.app.slicerUserSettingsFilePath),
                                                         "SR4ZCT", "models")
        return ModelLibrary(folder)

    def fittingModels(self, thicknessMm: float, incrementMm: float, pixelMm: float, profile: str) -> list:
        """The library's models that the engine will accept for this acquisition and in-plane pixel size."""
        return self.modelLibrary().fitting(thicknessMm, incrementMm, pixelMm, profile)

    def getParameterNode(self):
        return SR4ZCTParameterNode(super().getParameterNode())

    # -- requirements --------------------------------------------------------------------------------------------
    def setupPythonRequirements(self, askConfirmation: bool = True) -> bool:
        """Make torch (PyTorch extension) and Resources/requirements.txt importable; False if the user said no."""
        if not self.setupTorch(askConfirmation):
            return False
        missing = self.missingRequirements()
        if missing:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    _("SR4ZCT needs these Python packages: {names}. Install them now?").format(names=", ".join(missing))):
                return False
            slicer.util.pip_install(" ".join(missing))
            importlib.invalidate_caches()  # let this process find what was just installed
            stillMissing = self.missingRequirements()
            if stillMissing:
                raise RuntimeError(_("Installing {names} failed; see the Python console.").format(
                    names=", ".join(stillMissing)))
        return True

    @staticmethod
    def missingRequirements() -> list[str]:
        """The requirements (Resources/requirements.txt) that this Python cannot import."""
        requirements = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
        with open(requirements) as lines:
            names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return [name for name in names if importlib.util.find_spec(re.split(r"[<>=!~;\[ ]", name)[0]) is None]

    def setupTorch(self, askConfirmation: bool = True) -> bool:
        """torch from the PyTorch extension (PyTorchUtils), asked for once; False if the user cancelled."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("SR4ZCT needs the PyTorch extension: install 'PyTorch' from the Extensions "
                                 "Manager, restart Slicer, and try again."))
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            self.checkTorchVersion()
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("SR4ZCT needs PyTorch. Install it now through the PyTorch extension (a large download)?")):
            return False
        # Our dialog was the one question: PyTorchUtils must not ask again (its own cancel returns None).
        torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
        if torch is None:
            raise RuntimeError(_("PyTorch could not be installed; see the PyTorch extension's documentation."))
        importlib.invalidate_caches()
        return True

    @staticmethod
    def checkTorchVersion() -> None:
        """Refuse a PyTorch older than MINIMUM_TORCH_VERSION, saying how to replace it (read without importing it)."""
        try:
            version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return
        if _versionTuple(version) < _versionTuple(MINIMUM_TORCH_VERSION):
            raise RuntimeError(_(
                "PyTorch {version} is installed but SR4ZCT needs {minimum} or newer. In the PyTorch Utils module, "
                "uninstall PyTorch, restart Slicer, and install it with the version requirement '>={minimum}'.").format(
                version=version, minimum=MINIMUM_TORCH_VERSION))

    @staticmethod
    def torchDescription() -> str:
        """Whether PyTorch is installed, without importing it (a broken install must not break the panel)."""
        try:
            version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return _("PyTorch not installed yet (installed on first Apply)")
        return _("PyTorch {version}; the device is detected on Apply").format(version=version)

    def deviceDescription(self) -> str:
        """What a run with device 'auto' would use (imports torch: called on Apply, after the requirements)."""
        try:
            from SR4ZCTLib.core.device import resolve_device

            return resolve_device("auto")[1]
        except Exception as error:  # shown, not raised: the run itself reports what goes wrong
            return _("PyTorch cannot be loaded here: {error}").format(error=error)

    # -- geometry ------------------------------------------------------------------------------------------------
    def readAcquisition(self, inputVolume):
        """In-plane spacing, increment, thickness (DICOM SliceThickness when loaded from DICOM), their sources
        (SR4ZCTLib.mrml.nodes.NodeAcquisition).

        A DICOM thickness outside the engine's range is clamped, with a note; a volume that cannot be used (e.g. a
        slice spacing outside that range) gives its reason as `error`.
        """
        from SR4ZCTLib.mrml.nodes import NodeAcquisition, dicom_slice_thickness, node_geometry, slicer_dicom_lookup

        low, high = THICKNESS_RANGE_MM
        lookup = slicer_dicom_lookup()
        notes = []
        dicomThickness = dicom_slice_thickness(inputVolume, lookup) if inputVolume else None
        thickness = None
        if dicomThickness is not None and not low <= dicomThickness <= high:
            thickness = min(max(dicomThickness, low), high)
            notes.append(_("DICOM thickness {value:g} mm is outside {low:g}-{high:g} mm: set to {clamped:g} mm; "
                           "check it").format(value=dicomThickness, low=low, high=high, clamped=thickness))
        try:
            geometry, warnings = node_geometry(inputVolume, thickness_mm=thickness, lookup=lookup)
        except Exception as error:  # shown in the panel, not raised: the user may pick another volume
            return NodeAcquisition(error=str(error))
        return NodeAcquisition(tuple(geometry.in_plane_spacing_mm), geometry.acquisition.thickness_mm,
                               geometry.acquisition.increment_mm,
                               "dicom" if thickness is not None else geometry.thickness_source,
                               geometry.increment_source, tuple(warnings) + tuple(notes),
                               shape=tuple(reversed(inputVolume.GetImageData().GetDimensions())),
                               array_axis=geometry.array_axis)

    # -- processing ----------------------------------------------------------------------------------------------
    def process(self, inputVolume, outputVolume=None, confidence: bool = False, waitForCompletion: bool = True,
                progressCallback=None, logCallback=None, region=None, **options):
        """Enhance inputVolume in a separate process (Slicer stays responsive).

        :param options: the run options by their Slicer names, from SR4ZCTLib.options.RunOptions: thicknessMm,
            incrementMm (default: DICOM SliceThickness / the node's slice spacing), profile, preset, iterations,
            targetSpacingMm, device, seed, threads, consistency, consistencyLambda, allowNonHu, force, model,
            saveModel. Absent or None: the default. model: a model file (e.g. from fittingModels) to apply
            instead of training; saveModel=True saves the trained model into the model library (a path: there).
        :param confidence: also add the confidence map (coronal/sagittal disagreement, HU) as a second node,
            linked to the output (see confidenceNode).
        :param region: a markups ROI node: enhance only the input's voxels inside it (cropped on the input's own
            grid, no resampling; the result lies where those voxels lie).
        :param waitForCompletion: True returns the output node when done (console, tests);
            False returns the running job (poll(), cancel(), result_node) at once.
        :return: the output node, or the job. A failed or cancelled run adds no node.
        """
        import dataclasses

        from SR4ZCTLib.mrml.job import EnhanceJob
        from SR4ZCTLib.mrml.nodes import slicer_dicom_lookup
        from SR4ZCTLib.options import RunOptions

        if not inputVolume:
            raise ValueError(_("Input volume is invalid"))
        toLibrary = options.get("saveModel") is True  # True: into the library; a path: there; False: not saved
        given = {name: value for name, value in options.items()
                 if value is not None and not (name == "saveModel" and isinstance(value, bool))}
        request = dataclasses.replace(RunOptions.from_slicer(**given), confidence=confidence)
        job = EnhanceJob(inputVolume, request, self.pythonExecutable(), output_node=outputVolume,
                        output_name=f"{inputVolume.GetName()} SR4ZCT", on_progress=progressCallback,
                        on_log=logCallback, lookup=slicer_dicom_lookup(),
                        model_library=self.modelLibrary() if toLibrary else None, roi_node=region)
        startTime = time.time()
        logging.info("SR4ZCT started")
        job.start()
        if not waitForCompletion:
            return job
        outputNode = job.wait()
        logging.info(f"SR4ZCT completed in {time.time() - startTime:.1f} s: {self.describeMetrics(job.metrics)}")
        return outputNode

    @staticmethod
    def exportDicom(resultVolume, folder: str, addToDatabase: bool = False) -> str:
        """Write a result as the derived DICOM series the command line writes (DERIVED\\SECONDARY, references to
        the input's slices, the input's study and frame of reference, from its instances in Slicer's DICOM
        database) into a new folder; addToDatabase also imports it there. Returns the folder."""
        from SR4ZCTLib.mrml.nodes import INPUT_ATTRIBUTE, export_dicom_series, slicer_dicom_files

        scene = resultVolume.GetScene()
        inputVolume = scene.GetNodeByID(resultVolume.GetAttribute(INPUT_ATTRIBUTE) or "") if scene else None
        if inputVolume is None:
            raise ValueError(_("{name} is not an SR4ZCT result whose input is in the scene").format(
                name=resultVolume.GetName()))
        written = str(export_dicom_series(resultVolume, inputVolume, folder, slicer_dicom_files()))
        if addToDatabase:
            from DICOMLib import DICOMUtils

            DICOMUtils.importDicom(written)
        return written

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's own Python (PythonSlicer) for the worker process."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def describeMetrics(metrics) -> str:
        """The held-out figures, time and device of a finished run (SR4ZCTLib.metrics.RunMetrics), for the panel."""
        if metrics is None or metrics.validation_psnr_db is None:
            return ""
        return _("In-plane stand-in check (held-out axial images blurred in-plane as this scan's slices are; not a "
                 "measure of the through-plane result): PSNR {psnr:.2f} dB, linear interpolation {linear:.2f} dB; "
                 "{total:.0f} s on {device}").format(psnr=metrics.validation_psnr_db,
                                                   linear=metrics.validation_linear_psnr_db,
                                                   total=metrics.total_seconds, device=metrics.device or "?")

    @staticmethod
    def estimateCost(acquisition, incrementMm: float, targetSpacingMm: Optional[float], preset: str,
                     iterations: Optional[int] = None, train: bool = True, shape: Optional[tuple] = None):
        """What enhancing a volume (readAcquisition's NodeAcquisition) will cost (SR4ZCTLib.mrml.cost.RunCost);
        train=False: a library model is applied, no training; shape: the region's (regionShape), else the volume's."""
        from SR4ZCTLib.mrml.cost import estimate_cost

        return estimate_cost(shape or acquisition.shape, acquisition.array_axis, incrementMm,
                             acquisition.in_plane_spacing_mm, targetSpacingMm, preset, iterations, train)

    @staticmethod
    def regionShape(inputVolume, region) -> Optional[tuple]:
        """The (slices, rows, columns) of the input inside the markups ROI; None without a region."""
        from SR4ZCTLib.mrml.nodes import node_region_shape

        return node_region_shape(region, inputVolume) if region else None

    @staticmethod
    def describeCost(cost, device: str = "auto") -> str:
        """The cost read-out: result size and spacing, memory needed against free, time on the chosen device."""
        from SR4ZCTLib.mrml.cost import BENCHMARK_SOURCE, duration_text

        slices, rows, columns = cost.output_shape
        lines = [_("Result: {slices} slices of {rows} x {columns}, every {spacing:.3f} mm").format(
            slices=slices, rows=rows, columns=columns, spacing=cost.output_spacing_mm)]
        needed = cost.memory_needed_bytes / 2**30
        if cost.memory_free_bytes is None:
            lines.append(_("Memory: about {needed:.1f} GiB needed (free memory unknown)").format(needed=needed))
        elif cost.refused:
            lines.append(_("Memory: about {needed:.1f} GiB needed but {free:.1f} GiB free: Apply will refuse. Close "
                           "other programs, or tick 'Run anyway' to try").format(
                needed=needed, free=cost.memory_free_bytes / 2**30))
        else:
            lines.append(_("Memory: about {needed:.1f} GiB needed, {free:.1f} GiB free").format(
                needed=needed, free=cost.memory_free_bytes / 2**30))
        devices = {"cpu": ("cpu",), "cuda": ("cuda",), "mps": ("mps",)}.get(device, ("cpu", "cuda"))
        times = [_("{time} on {device}").format(time=_(duration_text(cost.seconds.get(d))),
                                              device=_(choice_label("device", d)[0])) for d in devices]
        skipped = _("; no training: the chosen model is applied") if cost.training_skipped else ""
        lines.append(_("Time: {times}{skipped} (from the {source})").format(
            times=", ".join(times), skipped=skipped, source=_(BENCHMARK_SOURCE)))
        return "\n".join(lines)

    @staticmethod
    def describeProvenance(resultVolume) -> str:
        """How a result was made (its SR4ZCT.provenance attribute), in a few lines; '' for another volume."""
        from SR4ZCTLib.mrml.nodes import provenance

        record = provenance(resultVolume)
        if record is None:
            return ""
        acquisition, request = record.get("acquisition", {}), record.get("request", {})
        metrics = record.get("metrics") or {}
        training = metrics.get("training", {})
        lines = [
            _("Made by SR4ZCT {version} (PyTorch {torch}) on {date} from {input}").format(
                version=record.get("sr4zct_version"), torch=record.get("torch_version") or "?",
                date=record.get("created_utc", "?"), input=record.get("input", "?")),
            _("Thickness {thickness:g} mm ({thicknessSource}), increment {increment:g} mm ({incrementSource}), "
              "{profile} profile").format(
                thickness=acquisition.get("thickness_mm", 0), increment=acquisition.get("increment_mm", 0),
                thicknessSource=_(source_label(acquisition.get("thickness_source", ""))),
                incrementSource=_(source_label(acquisition.get("increment_source", ""))),
                profile=_(choice_label("profile", acquisition.get("profile", ""))[0]).lower()),
            _("{preset}, {iterations} iterations, seed {seed}, on {device}").format(
                preset=_(choice_label("preset", request.get("preset", ""))[0]),
                iterations=training.get("iterations", request.get("iterations") or "?"), seed=record.get("seed"),
                device=record.get("device") or "?"),
        ]
        if record.get("model"):
            lines.append(_("Model reused: {model}").format(model=record["model"]))
        return "\n".join(lines)

    @staticmethod
    def confidenceNode(outputVolume):
        """The latest confidence map node added with outputVolume (attribute SR4ZCT.confidenceOf), or None."""
        scene = outputVolume.GetScene() if outputVolume else None
        for index in reversed(range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") if scene else 0)):
            node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
            if node.GetAttribute("SR4ZCT.confidenceOf") == outputVolume.GetID():
                return node
        return None

    @staticmethod
    def describeConfidence(confidenceVolume) -> str:
        """What the colour overlay on the result means, for the panel."""
        display = confidenceVolume.GetDisplayNode() if confidenceVolume else None
        if display is None:
            return ""
        return _("Colour overlay on the result: where the coronal and sagittal passes disagree, 0-{top:.0f} HU of "
                 "disagreement; high = the network is less sure there (read with care; not an error bound).").format(
            top=display.GetWindowLevelMax())

    @staticmethod
    def showSideBySide(inputVolume, outputVolume, confidenceVolume=None, orientation: str = "Coronal") -> None:
        """Input alone left (Red), result right (Yellow) with the confidence map over it, linked, coronal by default."""
        layoutManager = slicer.app.layoutManager() if hasattr(slicer, "app") else None
        if layoutManager is None:  # no main window (tests, batch)
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, volume, overlay in (("Red", inputVolume, None), ("Yellow", outputVolume, confidenceVolume)):
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget is None:
                continue
            compositeNode = sliceWidget.sliceLogic().GetSliceCompositeNode()
            compositeNode.SetBackgroundVolumeID(volume.GetID())
            compositeNode.SetForegroundVolumeID(overlay.GetID() if overlay else None)
            if overlay:
                compositeNode.SetForegroundOpacity(CONFIDENCE_OPACITY)
            compositeNode.SetLinkedControl(True)
            sliceWidget.mrmlSliceNode().SetOrientation(orientation)
            sliceWidget.sliceLogic().FitSliceToAll()


#
# SR4ZCTTest
#


class SR4ZCTTest(ScriptedLoadableModuleTest):
    """Slicer self-test: a synthetic thick-slice volume (no download), a short CPU run, geometry and effect checked."""

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_SR4ZCT1()

    def test_SR4ZCT1(self):
        """Enhance a small synthetic 3 mm / 2 mm volume and check geometry and that it is not plain interpolation."""
        logic = SR4ZCTLogic()
        try:  # installs what is missing, as Apply does (without asking: this is a test)
            logic.setupPythonRequirements(askConfirmation=False)
        except RuntimeError as error:  # e.g. the PyTorch extension is not installed
            self.delayDisplay(f"Test skipped: {error}")
            return
        import numpy as np

        from SR4ZCTLib.core.acquisition import Acquisition
        from SR4ZCTLib.core.forward import simulate_thick_slices
        from SR4ZCTLib.core.inference import interpolation_to_grid
        from SR4ZCTLib.core.phantom import make_phantom

        self.delayDisplay("Starting the test")
        truth = make_phantom((61, 48, 48), 0.5, seed=1)
        acquisition = Acquisition(3.0, 2.0)
        thick = np.round(simulate_thick_slices(truth, 0, 0.5, acquisition).numpy()).astype(np.int16)
        ijkToRAS = np.diag([-0.5, -0.5, 2.0, 1.0])
        ijkToRAS[:3, 3] = [10.0, -20.0, 30.0]
        inputVolume = slicer.util.addVolumeFromArray(thick, ijkToRAS=ijkToRAS, name="SR4ZCTTestInput")
        inputBefore = slicer.util.arrayFromVolume(inputVolume).copy()
        volumesBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")

        outputVolume = logic.process(inputVolume, thicknessMm=3.0, profile="box", iterations=30, device="cpu")

        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), volumesBefore + 1)
        np.testing.assert_allclose(outputVolume.GetOrigin(), inputVolume.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(outputVolume.GetSpacing(), [0.5, 0.5, 0.5], atol=1e-6)
        inputDirections, outputDirections = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASDirectionMatrix(inputDirections)
        outputVolume.GetIJKToRASDirectionMatrix(outputDirections)
        for r in range(3):
            for c in range(3):
                self.assertAlmostEqual(inputDirections.GetElement(r, c), outputDirections.GetElement(r, c))
        result = slicer.util.arrayFromVolume(outputVolume).astype(np.float32)
        linear = np.einsum("fs,sji->fji", interpolation_to_grid(thick.shape[0], 2.0, 0.5).numpy(), thick.astype(np.float32))
        self.assertEqual(result.shape, linear.shape)
        self.assertGreater(float(np.abs(result - linear).mean()), 1.0)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), inputBefore)
        self.delayDisplay("Test passed")
