"""Static checks of the Slicer module that real Slicer would otherwise find at run time (it is not on CI)."""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "SR4ZCT"
SOURCE = (MODULE / "SR4ZCT.py").read_text()
TREE = ast.parse(SOURCE)
UI = ET.parse(MODULE / "Resources" / "UI" / "SR4ZCT.ui").getroot()


def ui_widget_names() -> set[str]:
    return {w.get("name") for w in UI.iter("widget")}


def ui_parameter_bindings() -> dict[str, str]:
    bindings = {}
    for widget in UI.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[widget.get("name")] = prop.find("string").text
    return bindings


def parameter_node_fields() -> set[str]:
    for node in TREE.body:
        if isinstance(node, ast.ClassDef) and node.name == "SR4ZCTParameterNode":
            assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
            return {stmt.target.id for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("SR4ZCTParameterNode not found")


def test_every_self_ui_name_exists_in_the_ui_file():
    used = {node.attr for node in ast.walk(TREE)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert used, "the widget uses no self.ui names: the check would be empty"
    missing = used - ui_widget_names()
    assert not missing, f"SR4ZCT.py uses self.ui.{sorted(missing)} that SR4ZCT.ui lacks"


def test_every_slicer_parameter_name_is_a_parameter_node_field():
    bindings = ui_parameter_bindings()
    fields = parameter_node_fields()
    assert bindings
    unknown = {w: p for w, p in bindings.items() if p not in fields}
    assert not unknown, f"SlicerParameterName without a parameter-node field: {unknown}"
    assert {"inputVolume", "outputVolume", "thicknessMm", "incrementMm"} <= set(bindings.values())


def test_every_library_file_is_listed_in_the_module_cmake():
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "SR4ZCT")
    listed = set(re.findall(r"(?<![\w/])(SR4ZCTLib/[^\s)]+)", cmake))
    shipped = {str(p.relative_to(MODULE)) for p in (MODULE / "SR4ZCTLib").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped, "no library files found"
    assert not shipped - listed, f"missing from SR4ZCT/CMakeLists.txt: {sorted(shipped - listed)}"
    assert not listed - shipped, f"listed but absent: {sorted(listed - shipped)}"
    for resource in ("Resources/Icons/SR4ZCT.png", "Resources/UI/SR4ZCT.ui", "Resources/requirements.txt"):
        assert resource.replace("SR4ZCT.", "SR4ZCT.") in cmake and (MODULE / resource).exists()


def test_module_follows_the_scripted_template():
    classes = {node.name: [getattr(b, "id", None) for b in node.bases] for node in TREE.body if isinstance(node, ast.ClassDef)}
    assert classes["SR4ZCT"] == ["ScriptedLoadableModule"]
    assert classes["SR4ZCTWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["SR4ZCTLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["SR4ZCTTest"] == ["ScriptedLoadableModuleTest"]
    widget_methods = {f.name for node in TREE.body if isinstance(node, ast.ClassDef) and node.name == "SR4ZCTWidget"
                      for f in node.body if isinstance(f, ast.FunctionDef)}
    assert {"setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose", "initializeParameterNode",
            "setParameterNode"} <= widget_methods
    assert 'loadUI(self.resourcePath("UI/SR4ZCT.ui"))' in SOURCE
    assert "connectParametersToGui(" in SOURCE and "tryWithErrorDisplay" in SOURCE


def test_torch_comes_from_the_pytorch_extension_only():
    assert "PyTorchUtils.PyTorchUtilsLogic()" in SOURCE and "installTorch(" in SOURCE
    requirements = (MODULE / "Resources" / "requirements.txt").read_text()
    listed = [line.strip() for line in requirements.splitlines() if line.strip() and not line.startswith("#")]
    assert "torch" not in [name.lower() for name in listed]
    assert not re.search(r"pip_install\([^)]*torch", SOURCE)


def test_extension_files_agree():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(SR4ZCT\)", cmake, flags=re.M)
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', cmake).group(1).split()
    catalog = json.loads((ROOT / "SR4ZCT.json").read_text())
    assert catalog["build_dependencies"] == depends == ["PyTorch"]
    assert catalog["build_subdirectory"] == "."
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert key in cmake
    assert "add_subdirectory(SR4ZCT)" in cmake and (ROOT / "LICENSE.txt").exists()
    from PIL import Image

    for icon in (ROOT / "SR4ZCT.png", MODULE / "Resources" / "Icons" / "SR4ZCT.png"):
        assert Image.open(icon).size == (128, 128)


def test_ui_connects_the_scene_to_each_node_selector():
    selectors = {w.get("name") for w in UI.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.find("receiver").text for c in UI.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert selectors and selectors == connected


def test_catalog_entry_is_formatted_as_the_extensions_index_expects():
    text = (ROOT / "SR4ZCT.json").read_text()
    # ExtensionsIndex runs prettier with multilineArraysWrapThreshold 0: every non-empty array on its own lines.
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


def test_no_link_to_a_repository_that_does_not_exist():
    for path in (MODULE / "SR4ZCT.py", ROOT / "SR4ZCT.json", ROOT / "CMakeLists.txt", ROOT / "README.md"):
        assert "github.com/SR4ZCT" not in path.read_text() and "githubusercontent.com/SR4ZCT" not in path.read_text()
    assert "<a href" not in SOURCE.split("acknowledgementText")[0].split("helpText")[1]


def test_requirements_are_what_the_slicer_path_imports_and_slicer_lacks():
    requirements = (MODULE / "Resources" / "requirements.txt").read_text()
    listed = {line.strip() for line in requirements.splitlines() if line.strip() and not line.startswith("#")}
    assert listed == {"scipy"}  # forward.py; numpy and SimpleITK ship with Slicer; psutil, tqdm, matplotlib optional
    assert "from scipy" in (MODULE / "SR4ZCTLib" / "core" / "forward.py").read_text()
    install = SOURCE.index("slicer.util.pip_install(")
    assert "importlib.invalidate_caches()" in SOURCE[install:install + 200]


def test_panel_imports_no_torch_and_optional_packages_lazily():
    setup = SOURCE[SOURCE.index("    def setup(self)"):SOURCE.index("    def cleanup(self)")]
    assert "deviceDescription" not in setup and "import torch" not in setup
    for name in ("core/memory.py", "mrml/job.py", "mrml/nodes.py", "progress.py", "options.py", "metrics.py", "report.py",
                 *(str(p.relative_to(MODULE / "SR4ZCTLib")) for p in sorted((MODULE / "SR4ZCTLib" / "cli").glob("*.py")))):
        tree = ast.parse((MODULE / "SR4ZCTLib" / name).read_text())
        top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                     for alias in node.names} | {node.module.split(".")[0] for node in tree.body
                                                 if isinstance(node, ast.ImportFrom) and node.module}
        assert not top_level & {"psutil", "tqdm", "matplotlib", "torch"}, name


def test_slicer_path_parses_as_python_3_9():
    # Slicer 5.6 ships Python 3.9 (5.8 and later: 3.12): the module and its library must not need newer syntax.
    for path in [MODULE / "SR4ZCT.py", *sorted((MODULE / "SR4ZCTLib").rglob("*.py"))]:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))
