"""The panel's words for the engine's messages, and its cost estimate against the measurements it comes from."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from SR4ZCTLib.mrml.cost import estimate_cost, duration_text, training_iterations
from SR4ZCTLib.mrml.wording import PANEL_CONTROLS, panel_text
from SR4ZCTLib.options import flagged_fields

LIBRARY = Path(__file__).resolve().parents[2] / "SR4ZCT" / "SR4ZCTLib"


def test_every_run_option_has_a_panel_name():
    flags = {f.metadata["option"].flag for f in flagged_fields()}
    assert flags <= set(PANEL_CONTROLS), flags - set(PANEL_CONTROLS)


def engine_messages() -> list[str]:
    """Every string literal of the engine (docstrings left out) that names a command-line flag and could reach the
    panel."""
    found = []
    for path in LIBRARY.rglob("*.py"):
        if path.parts[-2] in ("cli",) or path.name in ("options.py", "wording.py", "batch.py"):
            continue  # the command line's own help and its cohort runner (batch), and the table itself
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        found += [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and id(node) not in docstrings
                  and isinstance(node.value, str) and " " in node.value and re.search(r"--[a-z]", node.value)]
    return found


def test_no_engine_message_reaches_the_panel_with_a_flag():
    messages = engine_messages()
    assert len(messages) > 10, "the scan found too few messages to mean anything"
    left = [panel_text(m) for m in messages if re.search(r"--[a-z]", panel_text(m))]
    assert left == [], left


@pytest.mark.parametrize("message, words", [
    ("... available; crop the volume to the region you need, close other programs, or pass --force to try anyway",
     "tick 'Run anyway'"),
    ("this does not look like CT in HU. Pass --allow-non-hu to enhance it anyway", "Tick 'Not CT in HU' (Advanced)"),
    ("assuming it equals the increment, 5 mm. Give --thickness for the best result", "'Slice thickness'"),
    ("--target-spacing 9 mm is coarser than the slice increment", "'Output spacing' (Advanced) 9 mm"),
])
def test_the_engines_advice_in_panel_words(message, words):
    assert words in panel_text(message) and "--" not in panel_text(message)


def test_the_cost_matches_the_measurements_it_comes_from():
    from SR4ZCTLib.core.training import PRESETS, split_validation_slab, total_iterations

    assert training_iterations("fast", None, 150) == PRESETS["fast"].iterations
    assert training_iterations("paper", None, 150) == total_iterations(PRESETS["paper"],
                                                                       len(split_validation_slab(150)[0])) == 54000
    cost = estimate_cost((150, 512, 512), 0, 1.0, (0.74, 0.74), None, "fast")  # docs/benchmarks.md "Compute"
    assert cost.output_shape == (202, 512, 512)
    assert cost.seconds["cuda"] == pytest.approx(7.5 + 1.1)
    paper = estimate_cost((150, 512, 512), 0, 1.0, (0.74, 0.74), None, "paper", iterations=200)
    assert paper.seconds["cuda"] == pytest.approx(200 * 0.1379 + 11.4) and paper.seconds["cpu"] is None
    assert duration_text(None) == "not measured" and duration_text(30) == "about 30 s"
    assert duration_text(600) == "about 10 min" and duration_text(4 * 3600) == "about 4.0 h"
