"""Static checks of the Slicer extension: what can be verified without Slicer itself.

The module file must parse and declare Slicer's four scripted-module classes; the logic package must
import with no Slicer, Qt, VTK or torch present; the CMake lists, .ui and icon must match the code.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXT = Path(__file__).resolve().parents[1] / "slicer_extension"
MODULE = EXT / "OrthoFM"
LIB = MODULE / "OrthoFMLib"
FORBIDDEN = ("slicer", "qt", "vtk", "ctk", "torch", "monai", "monailabel", "orthofm", "SimpleITK", "itk",
             "nrrd", "requests")
# Slicer 5.6 still ships Python 3.9: the code must at least parse there.
OLDEST_SLICER_PYTHON = (3, 9)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path), feature_version=OLDEST_SLICER_PYTHON)


def test_module_file_declares_the_four_slicer_classes():
    tree = _tree(MODULE / "OrthoFM.py")
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert bases["OrthoFM"] == ["ScriptedLoadableModule"]
    assert bases["OrthoFMWidget"][0] == "ScriptedLoadableModuleWidget"
    assert bases["OrthoFMLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["OrthoFMTest"] == ["ScriptedLoadableModuleTest"]
    test_methods = [n.name for n in next(c for c in tree.body if getattr(c, "name", "") == "OrthoFMTest").body
                    if isinstance(n, ast.FunctionDef)]
    assert {"setUp", "runTest"} <= set(test_methods) and any(m.startswith("test_") for m in test_methods)


def test_module_file_is_small_and_wires_only():
    """The widget delegates: no HTTP, JSON or NRRD handling in the Slicer file (style anchor 10)."""
    source = (MODULE / "OrthoFM.py").read_text()
    assert len(source.splitlines()) < 600
    for word in ("http.client", "urllib", "requests", "json.loads", "read_nrrd", "import torch"):
        assert word not in source, word


@pytest.mark.parametrize("path", sorted(LIB.glob("*.py")), ids=lambda p: p.name)
def test_lib_has_no_slicer_qt_vtk_torch_imports(path):
    for node in ast.walk(_tree(path)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_lib_imports_with_no_slicer_present():
    """Import every module in a fresh interpreter where Slicer, Qt, VTK, torch... cannot be imported."""
    probe = f"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {FORBIDDEN!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(MODULE)!r})
import OrthoFMLib
mods = [m.name for m in pkgutil.iter_modules(OrthoFMLib.__path__)]
for m in mods:
    importlib.import_module('OrthoFMLib.' + m)
loaded = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})
print(len(mods), loaded)
"""
    out = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    count, loaded = out.stdout.split(" ", 1)
    assert int(count) == len(list(LIB.glob("*.py"))) - 1 and loaded.strip() == "[]"


def test_cmake_lists_every_script_and_resource():
    top = (EXT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(OrthoFM)" in top and "find_package(Slicer REQUIRED)" in top
    assert "Slicer_EXTENSION_CPACK" in top and re.search(r"set\(EXTENSION_CATEGORY \"\w+\"\)", top)
    module = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "OrthoFM")
    listed = set(re.findall(r"^\s+(\S+\.(?:py|ui|png))$", module, re.MULTILINE))
    on_disk = {"OrthoFM.py"} | {f"OrthoFMLib/{p.name}" for p in LIB.glob("*.py")}
    on_disk |= {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert listed == on_disk
    assert "slicerMacroBuildScriptedModule" in module and "WITH_GENERIC_TESTS" in module


def test_ui_file_has_every_widget_the_module_uses():
    root = ET.parse(MODULE / "Resources" / "UI" / "OrthoFM.ui").getroot()
    names = {w.get("name") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "OrthoFM.py").read_text()))
    assert used and used <= names, used - names
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}
    assert classes["OrthoFM"] == "qMRMLWidget"
    assert classes["inputVolumeSelector"] == classes["segmentationSelector"] == "qMRMLNodeComboBox"
    assert classes["heatmapOpacitySlider"] == classes["heatmapThresholdSlider"] == "ctkSliderWidget"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {c for c in classes.values() if c.startswith(("qMRML", "ctk"))} <= declared
    panels = [w.find("property/string").text for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    assert panels == ["Connect", "Tasks", "Results", "Annotate and train", "Settings"]


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE / "Resources" / "Icons" / "OrthoFM.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
