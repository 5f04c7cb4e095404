"""The house rules of ARCHITECTURE.md hold for the code (tools/architecture.py reads the imports)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "architecture.py"


def _tool():
    spec = importlib.util.spec_from_file_location("architecture", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imports_follow_the_layers_and_modules_stay_small():
    tool = _tool()
    assert tool.problems(tool.graph()) == []


def test_the_check_sees_a_broken_rule_and_a_cycle():
    tool = _tool()
    edges = tool.graph()
    edges["hearflow.metrics"] = edges["hearflow.metrics"] | {"hearflow.train"}  # a layer importing a stage
    edges["hearflow.evaluate"] = edges["hearflow.evaluate"] | {"hearflow.prepare"}  # a stage importing a stage
    edges["hearflow.config"] = edges["hearflow.config"] | {"hearflow.checkpoint"}  # checkpoint -> config -> ...
    found = tool.problems(edges)
    assert "hearflow.metrics (layer) imports hearflow.train (stage)" in found
    assert "hearflow.evaluate (stage) imports hearflow.prepare (stage)" in found
    assert any(line.startswith("import cycle: hearflow.checkpoint -> hearflow.config -> hearflow.checkpoint")
               for line in found)
