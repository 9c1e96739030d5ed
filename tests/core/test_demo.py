"""`skutag demo` end to end on the shipped photos: the default recipe, its int8 file through the gate.

Slow (the whole demo: a few minutes on 2 cores). The demo trains with `skutag train`'s defaults (no
recipe overrides), and its int8 export passes the unchanged 0.95 top-1 gate on the held-out photos
(it failed at 0.938 before the int8 export kept a depthwise-read stem float); the summary prints the
review queue.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from skutag.artifacts import TARGETS

PHOTOS = Path(__file__).resolve().parents[2] / "demo" / "photos"


@pytest.mark.slow
@pytest.mark.skipif(not (PHOTOS / "train").is_dir(), reason="demo/photos is absent")
def test_the_demo_trains_the_default_recipe_and_its_int8_file_passes_the_gate(tmp_path):
    from skutag.trainer.config import TrainConfig

    from skutag.demo import demo

    result = CliRunner().invoke(demo, ["--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    defaults = TrainConfig.__dataclass_fields__
    for name in ("head_solver", "cache_views", "tune_patience", "epochs", "refit", "freeze"):
        assert config[name] == defaults[name].default, name
    report = json.loads((tmp_path / "models" / "lite0-int8.onnx.json").read_text())
    assert report["parity"]["top1_agreement"] >= TARGETS["int8-cpu"].limits.min_top1_agreement == 0.95
    assert report["parity"]["shared_with_calibration"] == 0
    assert "review queue (held-out)" in result.output and "int8 parity gate" in result.output
