"""What a newcomer meets in the first hour of `skutag run`: small footers, a summary that tells the truth,
plain words for the wrong file, and nothing left behind by a refused run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from tests.batchrun.support import run_command, tiny_catalog
from tests.support.cli import skutag


def test_a_part_footer_is_small_and_the_class_statistics_live_in_the_summary(review_model, tmp_path):
    images = tiny_catalog(tmp_path / "one", 1, seed=5, classes=1)
    out = tmp_path / "out"
    result = skutag("run", review_model, images, "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    part = next(out.glob("part-*.parquet"))
    footer = pq.ParquetFile(part).metadata
    assert footer.serialized_size < 16 * 1024, footer.serialized_size  # 0.3: ~630 KB for this model
    metadata = pq.read_schema(part).metadata
    card = json.loads(metadata[b"skutag.card"])
    assert "review" not in card and card["classes"] == ["boot", "cup", "lamp", "sock"]
    assert set(json.loads(metadata[b"skutag.review"])) == {
        "score",
        "ood_threshold",
        "tpr",
        "confidence_threshold",
    }
    assert {"ood_score", "review", "review_reason"} <= set(pq.read_schema(part).names)
    summary = json.loads((out / "_summary.json").read_text())
    assert len(summary["review"]["class_means"]) == 4


def test_the_summary_of_a_finished_run_says_complete_and_names_the_model_absolutely(
    tiny_model, six_images, tmp_path
):
    os.symlink(tiny_model, tmp_path / "model.onnx")
    out = tmp_path / "out"
    result = skutag("run", "model.onnx", six_images, "--out", out, "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["complete"] is True and (out / "_SUCCESS").exists()
    assert Path(summary["model"]).is_absolute()
    assert "6 images decoded" in result.stderr and "images/s overall" in result.stderr


def test_a_night_that_reuses_every_row_says_so(tiny_model, six_images, tmp_path):
    import subprocess

    first, second = tmp_path / "d1", tmp_path / "d2"
    assert subprocess.run(run_command(tiny_model, six_images, "--out", first)).returncode == 0
    result = subprocess.run(
        run_command(tiny_model, six_images, "--out", second, "--since", first), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to decode" in result.stderr and "on none" not in result.stderr


def test_a_file_that_is_not_onnx_is_named_in_plain_words_and_leaves_no_out(tiny_model, six_images, tmp_path):
    cases = {
        "best.safetensors": "PyTorch weights",
        "model.ort": "ONNX Runtime's own format",
        "cut.onnx": "not an ONNX model (truncated, corrupted, or another kind of file)",
        "short.onnx": "not an ONNX model (no graph",
    }
    for name, words in cases.items():
        model = tmp_path / name
        # a truncated model; a few bytes protobuf parses as an empty model
        model.write_bytes(tiny_model.read_bytes()[:1000] if name == "cut.onnx" else b"\x08\x07\x12\x04skut")
        out = tmp_path / f"out-{name}"
        result = skutag("run", model, six_images, "--out", out)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Wire format" not in result.stderr and "ModelProto" not in result.stderr
        assert not out.exists()


def test_an_out_that_cannot_be_a_folder_is_one_line_exit_2(tiny_model, six_images, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out in (a_file, a_file / "under", "-"):
        for command in ("run", "plan"):
            args = (tiny_model, six_images) if command == "run" else (six_images,)
            result = skutag(command, *args, "--out", out, cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "--out" in result.stderr
            assert "Error" in result.stderr and "FileExistsError" not in result.stderr
    assert not (tmp_path / "-").exists() and a_file.read_text() == "x"


def test_logits_without_softmax_get_one_warning(tmp_path, six_images):
    import torch

    model = tmp_path / "plain.onnx"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(1, 3, 32, 32))
    with torch.no_grad():
        net[2].bias.fill_(9.0)  # logits far outside [0, 1]
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(model), dynamo=False,
                      dynamic_axes={"input": {0: "batch"}}, input_names=["input"])  # fmt: skip
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    common = (
        "run",
        model,
        six_images,
        "--labels",
        labels,
        "--image-size",
        "32",
        "--no-progress",
        "--workers",
        "0",
    )
    result = skutag(*common, "--out", tmp_path / "o1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("look like logits") == 1 and "--softmax" in result.stderr
    result = skutag(*common, "--softmax", "--out", tmp_path / "o2")
    assert result.returncode == 0 and "look like logits" not in result.stderr


def test_another_model_is_named_once_with_balanced_quotes(tiny_model, six_images, tmp_path):
    import onnx

    from skutag.runtime import gpu_present

    other = tmp_path / "other.onnx"
    proto = onnx.load(str(tiny_model))
    proto.doc_string = "retrained"
    onnx.save(proto, str(other))
    first = skutag("run", tiny_model, six_images, "--out", tmp_path / "a", "--no-progress")
    assert first.returncode == 0, first.stderr
    if not gpu_present():  # no GPU is the ordinary case: no warning on every CPU run
        assert "WARNING" not in first.stderr
    night = skutag(
        "run", other, six_images, "--out", tmp_path / "b", "--since", tmp_path / "a", "--no-progress"
    )
    assert night.returncode == 0 and night.stderr.count("reusing nothing") == 1, night.stderr
    refused = skutag("run", other, six_images, "--out", tmp_path / "a", "--no-progress")
    assert refused.returncode == 2 and "model sha256" in refused.stderr
    assert refused.stderr.count('"') % 2 == 0, refused.stderr


def test_after_a_resume_the_last_line_counts_this_attempts_decodes(tiny_model, six_images, tmp_path):
    out = tmp_path / "out"
    first = skutag("run", tiny_model, six_images, "--out", out, "--part-rows", "4", "--no-progress")
    assert first.returncode == 0, first.stderr
    log = json.loads((out / "_commits.json").read_text())
    dropped = log["parts"].pop()  # as if the attempt had died before committing its last unit
    (out / "_commits.json").write_text(json.dumps(log))
    (out / dropped["file"]).unlink()
    for name in ("_SUCCESS", "_summary.json"):
        (out / name).unlink()
    again = skutag("run", tiny_model, six_images, "--out", out, "--part-rows", "4", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert f"{dropped['rows']} image" in again.stderr and "6 images decoded" not in again.stderr
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["attempt_decoded"] == dropped["rows"] and summary["decoded"] == 6
