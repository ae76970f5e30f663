"""A small model of what the SR4ZCT panel runs on in 3D Slicer, for tests: real MRML (slicer-core), Slicer's real
`parameterNodeWrapper` of one version (../shared/slicer-python), and stand-ins for the rest.

The stand-ins model PythonQt as ../shared/slicer-python/README.md describes it: every `connect` is a separate
connection; on emit, slots run synchronously in connection order and get only as many arguments as they accept;
an exception in a slot is printed and does not reach the emitter (kept in `SLOT_ERRORS` here); setting a value
property (`value`, `currentNode`, `currentIndex`) emits the change signal synchronously when the value changes.
Only the widget classes SR4ZCT.ui uses are modelled; a `.ui` naming any other class, or a property its class does
not have, fails to load here (Qt would silently ignore such a property: `UNKNOWN_PROPERTIES` lists them).
Other names Slicer's own code refers to exist only as empty classes (`UNMODELLED`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import shutil
import sys
import traceback
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Optional

import vtk

import slicer
import slicer.util

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SR4ZCT"
SLICER_PYTHON = ROOT.parent / "shared" / "slicer-python"
VERSIONS = ("v5_6_2", "v5_8_0", "main")

SLOT_ERRORS: list[str] = []  # tracebacks of exceptions raised in slots (PythonQt prints them)
UNKNOWN_PROPERTIES: list[str] = []  # .ui properties the widget class does not have (Qt ignores them)
TIMERS: list["QTimer"] = []
HOSTS: list["ModuleHost"] = []


# ---- PythonQt signals --------------------------------------------------------------------------------------------
def _call_slot(slot: Callable, args: tuple) -> None:
    """Call slot with as many of args as it accepts; an exception is recorded, never raised (PythonQt prints it)."""
    try:
        parameters = list(inspect.signature(slot).parameters.values())
        if not any(p.kind == p.VAR_POSITIONAL for p in parameters):
            args = args[:sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)]
    except (TypeError, ValueError):
        pass
    try:
        slot(*args)
    except Exception:
        SLOT_ERRORS.append(traceback.format_exc())
        logging.error("exception in a slot:\n%s", SLOT_ERRORS[-1])


class Signal:
    """One signal of one object: a list of connections, called in order on emit."""

    def __init__(self) -> None:
        self._slots: list[Callable] = []

    def connect(self, slot: Callable) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Callable) -> None:
        for index, connected in enumerate(self._slots):
            if connected == slot:
                del self._slots[index]
                return

    def emit(self, *args) -> None:
        for slot in list(self._slots):
            _call_slot(slot, args)


class signal:
    """Declares a signal on a class; each object gets its own Signal."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner):
        if obj is None:
            return self
        return obj.__dict__.setdefault(f"_signal_{self.name}", Signal())


def value_property(name: str, signal_name: Optional[str], normalise=lambda self, value: value):
    """A Qt property: setting it stores the normalised value and emits signal_name(value) when it changed."""

    def getter(self):
        return self.__dict__.get(f"_{name}", self.DEFAULTS.get(name))

    def setter(self, value):
        value = normalise(self, value)
        old = getter(self)
        self.__dict__[f"_{name}"] = value
        if signal_name and value != old:
            getattr(self, signal_name).emit(value)

    return property(getter, setter)


# ---- QObject and the widgets SR4ZCT.ui uses ---------------------------------------------------------------------------
class QObject:
    DEFAULTS: dict = {}

    def __init__(self, parent: Optional["QObject"] = None) -> None:
        self._children: list[QObject] = []
        self._parent: Optional[QObject] = None
        self._dynamic: dict = {}
        self.objectName = ""
        if parent is not None:
            self.setParent(parent)

    @property
    def name(self) -> str:  # PythonQt's alias of objectName
        return self.objectName

    def setParent(self, parent: Optional["QObject"]) -> None:
        if self._parent is not None:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls) -> list:
        found = []
        for child in self._children:
            if isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    @classmethod
    def has_qt_property(cls, name: str) -> bool:
        return isinstance(getattr(cls, name, None), property)

    def property(self, name: str):
        return getattr(self, name) if self.has_qt_property(name) else self._dynamic.get(name)

    def setProperty(self, name: str, value) -> None:
        if self.has_qt_property(name):
            setattr(self, name, value)
        else:
            self._dynamic[name] = value

    def connect(self, signature: str, slot: Callable) -> None:  # PythonQt's connect("signal(args)", slot)
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature: str, slot: Callable) -> None:
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def isWidgetType(self) -> bool:
        return False


class QWidget(QObject):
    DEFAULTS = {"enabled": True, "visible": True, "toolTip": ""}
    enabled = value_property("enabled", None)
    visible = value_property("visible", None)
    toolTip = value_property("toolTip", None)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._layout = None

    def isWidgetType(self) -> bool:
        return True

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def setLayout(self, layout: "QLayout") -> None:
        self._layout = layout
        layout.setParent(self)

    def layout(self):
        return self._layout


class QLayout(QObject):
    def addWidget(self, widget: QWidget, *args) -> None:
        widget.setParent(self.parent() if self.parent() is not None else self)


class QVBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QLabel(QWidget):
    DEFAULTS = {**QWidget.DEFAULTS, "text": "", "wordWrap": False}
    text = value_property("text", None)
    wordWrap = value_property("wordWrap", None)


class QPushButton(QWidget):
    DEFAULTS = {**QWidget.DEFAULTS, "text": "", "checkable": False, "checked": False}
    clicked = signal()
    toggled = signal()
    text = value_property("text", None)
    checkable = value_property("checkable", None)
    checked = value_property("checked", "toggled")

    def click(self) -> None:
        """A user's click: only an enabled button emits."""
        if self.enabled:
            self.clicked.emit(False)


class QCheckBox(QWidget):
    """Setting `checked` emits stateChanged(0 or 2), then toggled(bool), when it changes (QAbstractButton::setChecked)."""

    DEFAULTS = {**QWidget.DEFAULTS, "text": "", "checked": False}
    stateChanged = signal()
    toggled = signal()
    clicked = signal()
    text = value_property("text", None)

    @property
    def checked(self) -> bool:
        return self.__dict__.get("_checked", False)

    @checked.setter
    def checked(self, value) -> None:
        value, old = bool(value), self.checked
        self.__dict__["_checked"] = value
        if value != old:
            self.stateChanged.emit(2 if value else 0)
            self.toggled.emit(value)

    def click(self) -> None:
        """A user's click: an enabled box toggles, then emits clicked."""
        if self.enabled:
            self.checked = not self.checked
            self.clicked.emit(self.checked)


class ctkCollapsibleButton(QPushButton):
    DEFAULTS = {**QPushButton.DEFAULTS, "collapsed": False}
    collapsed = value_property("collapsed", None)


class QProgressBar(QWidget):
    DEFAULTS = {**QWidget.DEFAULTS, "value": 0, "minimum": 0, "maximum": 100}
    valueChanged = signal()
    value = value_property("value", "valueChanged", lambda self, v: int(v))
    minimum = value_property("minimum", None)
    maximum = value_property("maximum", None)


class _SpinBox(QWidget):
    """QAbstractSpinBox: the value is clamped to [minimum, maximum]; changing the range clamps it again."""

    DEFAULTS = {**QWidget.DEFAULTS, "minimum": 0, "maximum": 99, "singleStep": 1, "value": 0, "suffix": ""}
    valueChanged = signal()
    value = value_property("value", "valueChanged", lambda self, v: self._normalise(v))
    singleStep = value_property("singleStep", None)
    suffix = value_property("suffix", None)

    def _normalise(self, value):
        return min(max(value, self.minimum), self.maximum)

    def _range_setter(name: str):
        def setter(self, bound):
            self.__dict__[f"_{name}"] = bound
            if name == "minimum" and self.maximum < bound:
                self.__dict__["_maximum"] = bound
            if name == "maximum" and self.minimum > bound:
                self.__dict__["_minimum"] = bound
            self.value = self.value  # clamps, and emits if that changed it
        return setter

    minimum = property(lambda self: self.__dict__.get("_minimum", self.DEFAULTS["minimum"]), _range_setter("minimum"))
    maximum = property(lambda self: self.__dict__.get("_maximum", self.DEFAULTS["maximum"]), _range_setter("maximum"))

    def setRange(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def setMinimum(self, minimum) -> None:
        self.minimum = minimum

    def setMaximum(self, maximum) -> None:
        self.maximum = maximum

    def _format(self, value) -> str:
        return str(value)

    @property
    def text(self) -> str:
        """What the box shows: specialValueText at the minimum where the class has it, else the number."""
        special = self.__dict__.get("_specialValueText", "")
        if special and self.value == self.minimum:
            return special
        return self._format(self.value) + self.suffix


class QSpinBox(_SpinBox):
    DEFAULTS = {**_SpinBox.DEFAULTS, "specialValueText": ""}
    value = value_property("value", "valueChanged", lambda self, v: int(self._normalise(int(v))))
    specialValueText = value_property("specialValueText", None)


class QDoubleSpinBox(_SpinBox):
    """Qt rounds the value to `decimals` (default 2)."""

    DEFAULTS = {**_SpinBox.DEFAULTS, "decimals": 2, "maximum": 99.99, "value": 0.0, "specialValueText": ""}
    value = value_property("value", "valueChanged",
                           lambda self, v: round(float(self._normalise(float(v))), self.decimals))
    decimals = value_property("decimals", None)
    specialValueText = value_property("specialValueText", None)

    def _format(self, value) -> str:
        return f"{value:.{self.decimals}f}"


class ctkDoubleSpinBox(QDoubleSpinBox):
    """ctkDoubleSpinBox wraps a QDoubleSpinBox but has no specialValueText property of its own."""

    specialValueText = None  # not a Qt property of this class: the .ui value becomes a dynamic property


QT_TOOLTIP_ROLE, QT_USER_ROLE = 3, 256  # Qt::ToolTipRole, Qt::UserRole


class QComboBox(QWidget):
    DEFAULTS = {**QWidget.DEFAULTS, "currentIndex": -1}
    currentIndexChanged = signal()
    currentIndex = value_property("currentIndex", "currentIndexChanged", lambda self, i: int(i))

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._items: list[str] = []
        self._data: list[dict] = []  # per item: role -> value (Qt::ItemDataRole)

    def itemText(self, index: int) -> str:
        return self._items[index] if 0 <= index < len(self._items) else ""

    def setItemText(self, index: int, text: str) -> None:
        """Qt changes only the shown text: the current index and its signals are untouched."""
        if 0 <= index < len(self._items):
            self._items[index] = str(text)

    def itemData(self, index: int, role: int = QT_USER_ROLE):
        return self._data[index].get(role) if 0 <= index < len(self._items) else None

    def setItemData(self, index: int, value, role: int = QT_USER_ROLE) -> None:
        if 0 <= index < len(self._items):
            self._data[index][role] = value

    def addItem(self, text: str) -> None:
        self._items.append(str(text))
        self._data.append({})
        if self.currentIndex == -1:  # Qt selects the first item added to an empty box
            self.currentIndex = 0

    def clear(self) -> None:
        self._items, self._data = [], []
        self.currentIndex = -1

    def count(self) -> int:
        return len(self._items)

    @property
    def currentText(self) -> str:
        return self._items[self.currentIndex] if 0 <= self.currentIndex < len(self._items) else ""


class qMRMLWidget(QWidget):
    mrmlSceneChanged = signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None
        self.isEntered = False  # qSlicerWidget's property, set by the module host

    def setMRMLScene(self, scene) -> None:
        if scene is not self._scene:
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(QWidget):
    """The node selector: follows the scene (nodes added, removed, scene closed) as qMRMLNodeComboBox does.

    Without noneEnabled, a node added to an empty selector becomes current (QComboBox selects the first row);
    a removed current node is replaced by the last remaining one; with noneEnabled, by None.
    While the scene is batch processing (close, import) the list is refreshed only at its end.
    """

    DEFAULTS = {**QWidget.DEFAULTS, "nodeTypes": [], "showChildNodeTypes": True, "addEnabled": True,
                "removeEnabled": True, "renameEnabled": False, "editEnabled": False, "noneEnabled": False,
                "noneDisplay": "None", "selectNodeUponCreation": True}
    currentNodeChanged = signal()
    currentNodeIDChanged = signal()
    nodeTypes = value_property("nodeTypes", None, lambda self, v: [t for t in v if t])
    showChildNodeTypes = value_property("showChildNodeTypes", None)
    addEnabled = value_property("addEnabled", None)
    removeEnabled = value_property("removeEnabled", None)
    renameEnabled = value_property("renameEnabled", None)
    editEnabled = value_property("editEnabled", None)
    noneEnabled = value_property("noneEnabled", None)
    noneDisplay = value_property("noneDisplay", None)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None
        self._current = None
        self._tags: list[int] = []

    # -- scene -----------------------------------------------------------------------------------------------------
    def setMRMLScene(self, scene) -> None:
        if scene is self._scene:
            return
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent):
                self._tags.append(scene.AddObserver(event, self._onNodeEvent))
            self._tags.append(scene.AddObserver(scene.EndBatchProcessEvent, self._onBatchEnd))
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def _onBatchEnd(self, caller, event) -> None:
        self._refresh()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeEvent(self, caller, event, node) -> None:
        if not self._scene.IsBatchProcessing():
            self._refresh()

    def nodes(self) -> list:
        if self._scene is None:
            return []
        found = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            if any(node.GetClassName() == t or (self.showChildNodeTypes and node.IsA(t)) for t in self.nodeTypes) \
                    and not node.GetHideFromEditors():
                found.append(node)
        return found

    def _refresh(self) -> None:
        nodes = self.nodes()
        if self._current is not None and all(n is not self._current for n in nodes):
            self._set_current(None if self.noneEnabled or not nodes else nodes[-1])
        elif self._current is None and nodes and not self.noneEnabled:
            self._set_current(nodes[0])

    # -- current node ------------------------------------------------------------------------------------------------
    def currentNode(self):
        return self._current

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node) -> None:
        if node is not None and all(n is not node for n in self.nodes()):
            node = None  # not in this selector's list: Qt selects nothing (or None)
        self._set_current(node)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene and node_id else None)

    def _set_current(self, node) -> None:
        if node is self._current:
            return
        self._current = node
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def items(self) -> list[str]:
        """The entries a user sees when opening the list (none item, nodes, then the action items)."""
        entries = [self.noneDisplay] if self.noneEnabled else []
        entries += [node.GetName() for node in self.nodes()]
        label = "Volume" if any("Volume" in t for t in self.nodeTypes) else "node"
        actions = (("addEnabled", f"Create new {label}"), ("removeEnabled", f"Delete current {label}"),
                   ("renameEnabled", f"Rename current {label}"), ("editEnabled", f"Edit current {label}"))
        return entries + [text for flag, text in actions if getattr(self, flag)]


class QFileDialog(QObject):
    """QFileDialog's static chooser: the folder a test put in `answer` ("" = the user cancelled)."""

    answer = ""

    @staticmethod
    def getExistingDirectory(parent=None, caption: str = "", directory: str = "") -> str:
        return QFileDialog.answer


class QTimer(QObject):
    timeout = signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.interval, self._active = 0, False
        TIMERS.append(self)

    def setInterval(self, msec: int) -> None:
        self.interval = msec

    def start(self, msec: Optional[int] = None) -> None:
        self._active = True

    def stop(self) -> None:
        self._active = False

    def isActive(self) -> bool:
        return self._active

    @staticmethod
    def singleShot(msec: int, slot: Callable) -> None:
        _call_slot(slot, ())


def process_events() -> None:
    """One turn of the event loop: every active timer fires once."""
    for timer in list(TIMERS):
        if timer.isActive():
            timer.timeout.emit()


# ---- QUiLoader: builds the widget tree of a .ui file ------------------------------------------------------------------
WIDGET_CLASSES = {cls.__name__: cls for cls in (QWidget, QLabel, QPushButton, QCheckBox, ctkCollapsibleButton, QProgressBar,
                                                 QSpinBox, QDoubleSpinBox, ctkDoubleSpinBox, QComboBox, qMRMLWidget,
                                                 qMRMLNodeComboBox)}
LAYOUT_CLASSES = {"QVBoxLayout": QVBoxLayout, "QFormLayout": QFormLayout}


def _property_value(element: ET.Element):
    value = element[0]
    if value.tag == "string":
        return value.text or ""
    if value.tag == "bool":
        return value.text == "true"
    if value.tag == "number":
        return int(value.text)
    if value.tag == "double":
        return float(value.text)
    if value.tag == "stringlist":
        return [s.text or "" for s in value.findall("string")]
    return None  # geometry, size policies, enums: layout only


class QFile:
    ReadOnly = 1

    def __init__(self, path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def open(self, mode) -> bool:
        return self.exists()


class QUiLoader:
    def load(self, qfile: QFile, parent=None):
        root = ET.parse(qfile.path).getroot()
        names: dict[str, QObject] = {}
        top = self._widget(root.find("widget"), None, names)
        for connection in root.iter("connection"):
            sender, receiver = names[connection.find("sender").text], names[connection.find("receiver").text]
            slot_name = connection.find("slot").text.split("(")[0]
            sender.connect(connection.find("signal").text, getattr(receiver, slot_name))
        return top

    def _widget(self, element: ET.Element, parent, names: dict) -> QWidget:
        class_name = element.get("class")
        if class_name not in WIDGET_CLASSES:
            raise RuntimeError(f"the panel model has no stand-in for {class_name}")
        widget = WIDGET_CLASSES[class_name](parent)
        widget.objectName = element.get("name")
        names[widget.objectName] = widget
        for prop in element.findall("property"):
            self._set_property(widget, prop.get("name"), _property_value(prop), prop.get("stdset") == "0")
        for item in element.findall("item"):  # combo box entries
            widget.addItem(_property_value(item.find("property")))
        layout = element.find("layout")
        if layout is not None:
            self._layout(layout, widget, names)
        return widget

    def _layout(self, element: ET.Element, widget: QWidget, names: dict) -> None:
        layout = LAYOUT_CLASSES[element.get("class")]()
        layout.objectName = element.get("name")
        widget.setLayout(layout)
        for item in element.findall("item"):
            child = item.find("widget")
            if child is not None:
                self._widget(child, widget, names)

    @staticmethod
    def _set_property(widget: QObject, name: str, value, dynamic: bool) -> None:
        if value is None or name == "geometry":
            return
        if not dynamic and not widget.has_qt_property(name):
            UNKNOWN_PROPERTIES.append(f"{type(widget).__name__}.{name}")
        widget.setProperty(name, value)


# ---- modules: qt, ctk, slicer extras, i18n, ScriptedLoadableModule, PyTorchUtils --------------------------------------
UNMODELLED = {
    "qt": ("QSlider", "QLineEdit", "QTextEdit", "QColor", "QIcon", "QDialog", "QMessageBox"),
    "ctk": ("ctkSliderWidget", "ctkRangeWidget", "ctkPathLineEdit", "ctkDirectoryButton", "ctkDoubleSlider",
            "ctkDoubleRangeSlider", "ctkComboBox", "ctkCheckBox", "ctkCheckablePushButton", "ctkColorPickerButton"),
    "slicer": ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qSlicerWidget"),
}


class _App:
    """slicer.app: what SR4ZCT.py and slicer.util call on it."""

    applicationName = "3D Slicer"

    def __init__(self) -> None:
        import tempfile

        self.testing = False
        self.connections: list = []
        # qSlicerApplication's settings file: a fresh user folder per install(), as a new Slicer user has
        self.slicerUserSettingsFilePath = str(Path(tempfile.mkdtemp(prefix="slicer-user-")) / "Slicer.ini")
        self.layout_manager = None  # no main window, as in Slicer's batch mode; see open_main_window
        self.colour_logic = None

    def testingEnabled(self) -> bool:
        return self.testing

    def commandOptions(self):
        return types.SimpleNamespace(testingEnabled=self.testing)

    def setOverrideCursor(self, cursor) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass

    def processEvents(self) -> None:
        pass

    def topLevelWidgets(self) -> list:
        return []  # no main window: slicer.util's dialogs only log

    def layoutManager(self):
        return self.layout_manager

    def connect(self, signature: str, slot: Callable) -> None:
        """qSlicerApplication's signals (e.g. startupCompleted()): kept, emitted by the test that needs them."""
        self.connections.append((signature, slot))


class SliceWidget:
    """qMRMLSliceWidget: its real MRML slice logic (slice node and slice composite node in the scene)."""

    def __init__(self, scene, name: str) -> None:
        self._logic = slicer.vtkMRMLSliceLogic()
        self._logic.SetMRMLScene(scene)
        self._node = self._logic.AddSliceNode(name)

    def sliceLogic(self):
        return self._logic

    def mrmlSliceNode(self):
        return self._node


class LayoutManager:
    """qSlicerLayoutManager: the layout in use, and the Red, Yellow and Green slice widgets."""

    def __init__(self, scene) -> None:
        self.layout = None
        self._widgets = {name: SliceWidget(scene, name) for name in ("Red", "Yellow", "Green")}

    def setLayout(self, layout: int) -> None:
        self.layout = layout

    def sliceWidget(self, name: str):
        return self._widgets.get(name)


def open_main_window(scene) -> LayoutManager:
    """What Slicer's application has at start that slicer-core lacks: colour tables, slice views; returns the layout."""
    slicer.app.colour_logic = slicer.vtkMRMLColorLogic()  # kept as Slicer keeps it: it removes its colours when freed
    slicer.app.colour_logic.SetMRMLScene(scene)
    slicer.app.colour_logic.AddDefaultColorNodes()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    slicer.app.layout_manager = LayoutManager(scene)
    return slicer.app.layout_manager


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _scripted_loadable_module() -> types.ModuleType:
    """slicer.ScriptedLoadableModule: the parts the module template uses, as Slicer's own file defines them."""
    import unittest

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            super().__init__()
            self.moduleName = type(self).__name__[:-len("Widget")]
            self.parent = parent
            self.layout = parent.layout()

        def resourcePath(self, filename: str) -> str:
            return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)

        def setup(self) -> None:
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            super().__init__()
            self.moduleName = type(self).__name__[:-len("Logic")]

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                if node.GetAttribute("ModuleName") != self.moduleName:  # removed by a scene close
                    node.SetAttribute("ModuleName", self.moduleName)
                return node
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            return slicer.mrmlScene.AddNode(node)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, requestedDelay=None, msec=None) -> None:
            slicer.util.delayDisplay(message, 0)

    return _module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
                   ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                   ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                   ScriptedLoadableModuleTest=ScriptedLoadableModuleTest,
                   __all__=["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                            "ScriptedLoadableModuleTest"])


class PyTorchUtilsLogic:
    """SlicerPyTorch's PyTorchUtilsLogic (fepegar/SlicerPyTorch): torchInstalled() and installTorch() as it defines them.

    installTorch here records its calls; with `install_result` it returns that (None: the user cancelled its dialog).
    """

    calls: list[dict] = []
    installed = True
    install_result = None

    @staticmethod
    def torchInstalled() -> bool:
        return PyTorchUtilsLogic.installed

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        PyTorchUtilsLogic.calls.append({"askConfirmation": askConfirmation,
                                        "torchVersionRequirement": torchVersionRequirement})
        return PyTorchUtilsLogic.install_result


_SLICER_ORIGINAL_PATH = list(slicer.__path__)


def install(version: str) -> types.ModuleType:
    """Make `import qt, ctk, slicer.parameterNodeWrapper, ...` give this model with Slicer `version`; returns SR4ZCT."""
    folder = SLICER_PYTHON / version
    if not (folder / "slicer" / "parameterNodeWrapper").is_dir():
        raise FileNotFoundError(folder)
    classes = {**WIDGET_CLASSES, **LAYOUT_CLASSES}
    qt = _module("qt", QObject=QObject, QTimer=QTimer, QFile=QFile, QUiLoader=QUiLoader, QFileDialog=QFileDialog,
                 Qt=types.SimpleNamespace(WaitCursor=3, ToolTipRole=QT_TOOLTIP_ROLE, UserRole=QT_USER_ROLE),
                 **{n: c for n, c in classes.items() if n.startswith("Q")})
    ctk = _module("ctk", **{n: c for n, c in classes.items() if n.startswith("ctk")})
    for module_name, names in UNMODELLED.items():
        target = {"qt": qt, "ctk": ctk, "slicer": slicer}[module_name]
        for name in names:
            if not hasattr(target, name):
                setattr(target, name, type(name, (QWidget,), {}))
    qt.QMessageBox.Ok, qt.QMessageBox.Cancel, qt.QMessageBox.Critical, qt.QMessageBox.Question = 1024, 4194304, 3, 4
    sys.modules.update({"qt": qt, "ctk": ctk, "slicer.ScriptedLoadableModule": _scripted_loadable_module(),
                        "slicer.i18n": _module("slicer.i18n", tr=lambda text: text,
                                               translate=lambda context, text: text),
                        "PyTorchUtils": _module("PyTorchUtils", PyTorchUtilsLogic=PyTorchUtilsLogic)})
    slicer.qMRMLWidget, slicer.qMRMLNodeComboBox = qMRMLWidget, qMRMLNodeComboBox
    slicer.app = _App()
    for name in [n for n in sys.modules if n.startswith("slicer.parameterNodeWrapper") or n == "SR4ZCT"]:
        del sys.modules[name]
    if hasattr(slicer, "parameterNodeWrapper"):
        del slicer.parameterNodeWrapper
    slicer.__path__[:] = _SLICER_ORIGINAL_PATH + [str(folder / "slicer")]
    importlib.import_module("slicer.parameterNodeWrapper")
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    return importlib.import_module("SR4ZCT")


def uninstall() -> None:
    """Remove the model's modules again (the rest of the test suite sees plain slicer-core)."""
    for name in [n for n in sys.modules if n.startswith("slicer.parameterNodeWrapper")
                 or n in ("SR4ZCT", "qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.i18n", "PyTorchUtils")]:
        del sys.modules[name]
    if hasattr(slicer, "app"):
        shutil.rmtree(Path(slicer.app.slicerUserSettingsFilePath).parent, ignore_errors=True)
    for attribute in ("parameterNodeWrapper", "app", "qMRMLWidget", "qMRMLNodeComboBox", "dicomDatabase",
                      *UNMODELLED["slicer"]):
        if attribute in vars(slicer):
            delattr(slicer, attribute)
    slicer.__path__[:] = _SLICER_ORIGINAL_PATH
    TIMERS.clear()


class ModuleHost:
    """What Slicer's module manager does with a scripted module's widget: create, setup, enter, exit."""

    def __init__(self, module: types.ModuleType) -> None:
        self.parent = qMRMLWidget()
        self.parent.setLayout(QVBoxLayout())
        self.widget = module.SR4ZCTWidget(self.parent)
        self.widget.setup()
        HOSTS.append(self)

    def close(self) -> None:
        """What Slicer does on exit: the widget's cleanup(), and the selectors leave the scene."""
        self.widget.cleanup()
        for selector in self.parent.findChildren(qMRMLNodeComboBox):
            selector.setMRMLScene(None)

    @property
    def ui(self):
        return self.widget.ui

    def enter(self) -> None:
        self.parent.isEntered = True
        self.widget.enter()

    def exit(self) -> None:
        self.widget.exit()
        self.parent.isEntered = False


@contextlib.contextmanager
def slicer_version(version: str):
    """The model for one Slicer version, with a fresh scene; removed again afterwards."""
    SLOT_ERRORS.clear()
    UNKNOWN_PROPERTIES.clear()
    slicer.mrmlScene = slicer.vtkMRMLScene()
    try:
        yield install(version)
    finally:
        while HOSTS:
            HOSTS.pop().close()
        slicer.mrmlScene.Clear(1)
        uninstall()


class DicomDatabase:
    """ctkDICOMDatabase as slicer.dicomDatabase: isOpen, fileForInstance, fileValue; a closed one logs SQL errors."""

    def __init__(self, slice_thickness: dict[str, str], is_open: bool = True, files: Optional[dict] = None) -> None:
        """files: instance UID -> a real DICOM file (else each known UID has a made-up path)."""
        self.values, self.isOpen, self.queries, self.files = slice_thickness, is_open, [], files

    def fileForInstance(self, uid: str) -> str:
        self.queries.append(uid)
        if not self.isOpen:
            logging.error('SQL failed\n Bad SQL: SELECT Filename FROM Images WHERE SOPInstanceUID=?\n"Database not open"')
            return ""
        if self.files is not None:
            return self.files.get(uid, "")
        return f"/dicom/{uid}.dcm" if uid in self.values else ""

    def fileValue(self, file: str, tag: str) -> str:
        return self.values.get(Path(file).stem, "") if tag == "0018,0050" else ""
