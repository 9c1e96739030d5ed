"""GPU decode (`--decode gpu`): the same code path on the CPU, routing, tolerance, the pipeline.

torchvision's `decode_jpeg` also runs with device="cpu", so `GpuDecoder` is exercised here
exactly as on CUDA except for the decoder library (libjpeg-turbo instead of nvJPEG); the
`gpu`-marked tests at the end repeat the pixel and end-to-end checks on CUDA.
"""

from __future__ import annotations

import io
import random
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageOps
from skutag.batchrun.decode.contained import ContainedDecoder
from skutag.batchrun.decode.gpu import (
    MEAN_TOLERANCE,
    P99_TOLERANCE,
    GpuDecoder,
    decode_jpegs,
    draft_scale,
    orient,
    pixel_difference,
    resize_crop,
)
from skutag.batchrun.decode.jpeg_probe import gpu_job
from skutag.batchrun.decode.loader import Collate, Preprocess, ReadOptions, TaskDataset, decode_one
from skutag.batchrun.decode.supervise import SupervisedLoader, batches_of
from skutag.batchrun.engines.pipeline import run_pipeline

from skutag.images import draft, exif_orientation, load_image
from skutag.runtime import gpu_present
from tests.support.cli import skutag
from tests.support.photos import REAL_PHOTOS, needs_photos

PREPROCESS = Preprocess(image_size=224, resize_size=256, interpolation="bilinear")
READ = ReadOptions(max_bytes=1 << 28, storage_options={})


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB array: smooth gradients, a hard-edged object, some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    top, left = height // 4, width // 3
    pixels[top : top + height // 2, left : left + width // 3] = rng.integers(0, 255, 3)
    pixels += rng.normal(0, 6, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray, mode: str = "RGB", orientation: int = 1, **options) -> bytes:
    image = Image.fromarray(pixels).convert(mode)
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.pop("quality", 90), **options)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fallback():
    decoder = ContainedDecoder(PREPROCESS, timeout_s=60)
    yield decoder
    decoder.close()


def write_files(folder: Path, files: dict[str, bytes]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(str(folder / name))
    return paths


def decode_on(paths: list[str], device: str, fallback: ContainedDecoder, batch_size: int | None = None):
    """The GPU path on `device` for `paths` as one batch: read-only workers' samples -> GpuDecoder."""
    dataset = TaskDataset(pa.array(paths), np.full(len(paths), -1), PREPROCESS, READ, read_only=True)
    batch = Collate(PREPROCESS.image_size)([dataset[i] for i in range(len(paths))])
    routed = batch.encoded.rows() if batch.encoded is not None else []
    decoder = GpuDecoder(PREPROCESS, device=device, batch_size=batch_size or len(paths), fallback=fallback)
    return decoder(batch), routed, decoder


def gpu_code_path(paths: list[str], device: str) -> list[np.ndarray]:
    """What GpuDecoder runs per file (decode_jpegs, resize_crop), for any JPEG, progressive ones too."""
    pixels = []
    for path in paths:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            orientation = exif_orientation(image)
        decoded = decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device(device))[
            0
        ]
        pixels.append(resize_crop(decoded[None], orientation, PREPROCESS)[0].cpu().numpy())
    return pixels


def assert_within_tolerance(got: np.ndarray, expected: np.ndarray, what: object) -> tuple[float, float]:
    mean, p99 = pixel_difference(got, expected)
    assert mean <= MEAN_TOLERANCE and p99 <= P99_TOLERANCE, f"{what}: mean {mean:.3f}, p99 {p99:.1f}"
    return mean, p99


# -- geometry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(1600, 1200), (1080, 1340), (400, 533), (257, 300), (2049, 2049), (5000, 700)]
)
def test_draft_scale_is_the_scale_pillow_decodes_at(size):
    image = Image.open(io.BytesIO(jpeg(photo(*size))))
    draft(image, 256)
    scale = draft_scale(*size, 256)
    assert image.size == (-(-size[0] // scale), -(-size[1] // scale))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillows_exif_transpose(orientation):
    pixels = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    image = Image.fromarray(pixels)
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    got = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert got.shape == expected.shape and (got == expected).all()


# -- pixels within tolerance of the CPU path ---------------------------------------------------


def test_synthetic_jpegs_match_the_cpu_path(tmp_path, fallback):
    files = {
        "big-420.jpg": jpeg(photo(1600, 1200, 1)),
        "portrait-444.jpg": jpeg(photo(900, 1300, 2), subsampling=0),
        "progressive.jpg": jpeg(photo(1400, 1000, 3), progressive=True),
        "grey.jpg": jpeg(photo(800, 640, 4), mode="L"),
        "small.jpg": jpeg(photo(300, 260, 5)),  # no draft: resized up from 260
        "exact.jpg": jpeg(photo(256, 256, 6)),  # crop only
        "odd.jpg": jpeg(photo(1023, 777, 7), quality=75),
    }
    paths = write_files(tmp_path, files)
    batch, routed, decoder = decode_on(paths, "cpu", fallback, batch_size=8)
    assert routed == [0, 1, 3, 4, 5, 6] and decoder.fell_back == 0  # progressive: decoded by the worker
    assert tuple(batch.pixels.shape) == (8, 224, 224, 3)  # padded to the batch size
    for row, path in enumerate(paths):
        expected = load_image(path)
        assert (batch.widths[row], batch.heights[row]) == (expected.width, expected.height)
        assert_within_tolerance(batch.pixels[row].numpy(), expected.pixels, path)
    assert_within_tolerance(gpu_code_path([paths[2]], "cpu")[0], load_image(paths[2]).pixels, "progressive")


@needs_photos
def test_real_photos_match_the_cpu_path(fallback):
    """Every 10th real photo: progressive 1000-1580 px catalog photos and 400 px baseline ones."""
    paths = sorted(str(p) for p in REAL_PHOTOS.rglob("*.jpg"))[::10]
    assert len(paths) > 60
    worst = (0.0, 0.0)
    for path, pixels in zip(paths, gpu_code_path(paths, "cpu"), strict=True):
        mean, p99 = assert_within_tolerance(pixels, load_image(path).pixels, path)
        worst = (max(worst[0], mean), max(worst[1], p99))
    assert worst[0] < MEAN_TOLERANCE / 2  # all 690 photos: worst mean 0.34, worst p99 4 (libjpeg-turbo)
    baseline = [p for p in paths if "/clothing/" in p]
    batch, routed, decoder = decode_on(baseline, "cpu", fallback)
    assert len(routed) == len(baseline) and decoder.fell_back == 0  # baseline JPEGs: all to the GPU path
    for row, path in enumerate(baseline):
        assert_within_tolerance(batch.pixels[row].numpy(), load_image(path).pixels, path)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpegs_come_out_upright(tmp_path, fallback, orientation):
    upright = photo(1200, 800, 9)
    upright[:200, :300] = (255, 0, 0)  # a red corner, top left when upright
    stored = {3: np.rot90(upright, 2), 6: np.rot90(upright, 1), 8: np.rot90(upright, -1)}[orientation]
    path = write_files(tmp_path, {"turned.jpg": jpeg(np.ascontiguousarray(stored), orientation=orientation)})
    batch, routed, _decoder = decode_on(path, "cpu", fallback)
    assert routed == [0]
    assert (batch.widths[0], batch.heights[0]) == (1200, 800)
    pixels = batch.pixels[0].numpy()
    assert_within_tolerance(pixels, load_image(path[0]).pixels, orientation)
    red = pixels[..., 0].astype(int) - pixels[..., 1]
    assert red[:20, :20].mean() > 200 and red[-20:, -20:].mean() < 50  # the red corner is top left


# -- routing: what the GPU cannot take goes through the CPU path, rows aligned -------------------


def test_a_mixed_batch_is_routed_and_keeps_the_cpu_paths_rows(tmp_path, fallback):
    good = jpeg(photo(1000, 750, 11))
    scan = good.find(b"\xff\xda") + 2000
    files = {
        "a-good.jpg": good,
        "b-photo.png": png(photo(500, 400, 12)),
        "c-cmyk.jpg": jpeg(photo(600, 600, 13), mode="CMYK"),
        "d-truncated.jpg": good[: len(good) // 2],
        "e-empty.jpg": b"",
        "f-text.jpg": b"this is not an image at all",
        "g-grey.jpg": jpeg(photo(640, 480, 14), mode="L"),
        # refused by the JPEG decoder (a bad marker inside the scan), decoded by Pillow's rules
        "h-bad-marker.jpg": good[:scan] + b"\xff\x12\x34" + good[scan:],
        "i-progressive.jpg": jpeg(photo(900, 700, 15), progressive=True, orientation=6),
    }
    paths = write_files(tmp_path, files)
    batch, routed, decoder = decode_on(paths, "cpu", fallback, batch_size=16)
    names = [Path(p).name for p in paths]
    assert [names[r] for r in routed] == ["a-good.jpg", "g-grey.jpg", "h-bad-marker.jpg"]
    assert decoder.fell_back == 1  # h: the JPEG decoder refused it, the CPU path decided
    for row, path in enumerate(paths):
        expected = decode_one(row, path, -1, PREPROCESS, READ)
        assert batch.indices[row] == row
        assert bool(batch.ok[row]) == (expected.pixels is not None), names[row]
        assert batch.error_kinds[row] == expected.error_kind, names[row]
        assert batch.sha256[row] == expected.sha256 and batch.nbytes[row] == expected.nbytes
        if expected.pixels is not None:
            assert (batch.widths[row], batch.heights[row]) == (expected.width, expected.height)
            assert_within_tolerance(batch.pixels[row].numpy(), expected.pixels, names[row])
    assert batch.error_kinds[:8] == [None, None, None, "truncated", "empty", "not_image", None, "truncated"]


def test_jpegs_the_gpu_cannot_take_are_not_handed_to_it():
    assert gpu_job(jpeg(photo(64, 64))) is not None
    assert gpu_job(jpeg(photo(64, 64), mode="CMYK")) is None
    assert gpu_job(jpeg(photo(64, 64), progressive=True)) is None  # the workers decode those
    assert gpu_job(jpeg(photo(64, 64))[:-200]) is None  # no end-of-image marker
    assert gpu_job(png(photo(64, 64))) is None
    twelve_bit = bytearray(jpeg(photo(64, 64)))
    frame = twelve_bit.find(b"\xff\xc0")
    twelve_bit[frame + 4] = 12  # precision byte of the frame header
    assert gpu_job(bytes(twelve_bit)) is None
    lossless = bytearray(jpeg(photo(64, 64)))
    lossless[frame + 1] = 0xC3
    assert gpu_job(bytes(lossless)) is None
    assert gpu_job(jpeg(photo(64, 48), orientation=6)).stored_size == (64, 48)


def test_a_cpu_decode_that_runs_past_its_time_limit_is_a_timeout_row():
    slow = ContainedDecoder(PREPROCESS, timeout_s=0.001)
    try:
        sample = slow.decode(7, jpeg(photo(4000, 3000, 16)))
    finally:
        slow.close()
    assert sample.index == 7 and sample.error_kind == "timeout" and sample.pixels is None


# -- --decode gpu without CUDA -----------------------------------------------------------------


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU")
def test_decode_gpu_without_cuda_fails_in_one_line(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    write_files(folder, {"a.jpg": jpeg(photo(64, 64))})
    result = skutag("run", tiny_model, folder, "--out", tmp_path / "out", "--decode", "gpu", "--no-progress")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--decode gpu" in lines[0] and "no NVIDIA GPU" in lines[0], result.stderr


# -- the pipeline ------------------------------------------------------------------------------


def test_the_pipeline_keeps_order_while_stages_overlap():
    rng = random.Random(0)
    active, overlapped, seen = set(), [], []
    lock = threading.Lock()

    def stage(name):
        def run(item):
            with lock:
                active.add(name)
                overlapped.append(len(active) > 1)
            time.sleep(rng.random() * 0.004)
            with lock:
                active.discard(name)
            return item

        return run

    def last(item):
        stage("last")(item)
        seen.append(item)

    busy = run_pipeline(iter(range(200)), [stage("decode"), stage("middle"), last], depth=2)
    assert seen == list(range(200)) and len(busy) == 3
    assert any(overlapped)  # the stages did run at the same time


def test_a_failing_stage_stops_the_pipeline_and_raises_its_error():
    fed = []

    def source():
        for item in range(1000):
            fed.append(item)
            yield item

    def explode(item):
        if item == 5:
            raise ValueError("stage failed on 5")
        return item

    with pytest.raises(ValueError, match="stage failed on 5"):
        run_pipeline(source(), [explode, lambda item: None], depth=2)
    assert len(fed) < 20  # the source stopped soon after


def test_gpu_path_pipeline_rows_match_the_cpu_path(tiny_model, small_catalog, tmp_path, fallback):
    """Read-only workers -> GpuDecoder (device cpu) -> ORT: every task's row as the CPU path's."""
    from skutag.batchrun.predict.infer import make_predictor, open_session
    from skutag.batchrun.predict.model import read_contract

    contract = read_contract(tiny_model)
    card = contract.card
    preprocess = Preprocess(card.image_size, card.resize_size, card.interpolation)
    broken = write_files(tmp_path, {"empty.jpg": b"", "cut.jpg": jpeg(photo(300, 300))[:900]})
    paths = sorted(str(p) for p in small_catalog.rglob("*") if p.suffix in (".jpg", ".png")) + broken
    paths.insert(17, broken[0])  # an error row inside a batch
    session, info = open_session(contract, "cpu", batch_size=8)
    predict = make_predictor(session, info, contract, topk=2, embeddings=False, batch_size=8)

    def rows(read_only: bool) -> dict[int, tuple]:
        dataset = TaskDataset(pa.array(paths), np.full(len(paths), -1), preprocess, READ, read_only=read_only)
        loader = SupervisedLoader(
            dataset, batches_of(len(paths), 8), workers=1, prefetch=2, pad_to=0, pin_memory=False,
            nice=0, timeout_s=60,
        )  # fmt: skip
        found, order = {}, []
        decoder = GpuDecoder(
            preprocess, device="cpu", batch_size=8, fallback=ContainedDecoder(preprocess, 60)
        )

        def decode(batch):
            time.sleep(random.random() * 0.01)  # shuffle the stages' timing
            return decoder(batch) if read_only else batch

        def infer(batch):
            predictions = predict(batch) if batch.ok.any() else None
            order.extend(batch.indices.tolist())
            for row, task in enumerate(batch.indices.tolist()):
                label = int(predictions.topk_indices[row, 0]) if batch.ok[row] else None
                score = float(predictions.topk_scores[row, 0]) if batch.ok[row] else None
                found[task] = (
                    batch.error_kinds[row],
                    label,
                    score,
                    int(batch.widths[row]),
                    batch.sha256[row],
                )

        batches = loader.start()
        try:
            run_pipeline(batches, [decode, infer])
        finally:
            batches.close()
            decoder.fallback.close()
        assert order == list(range(len(paths)))  # in order, every task once
        return found

    gpu_rows, cpu_rows = rows(read_only=True), rows(read_only=False)
    assert gpu_rows.keys() == cpu_rows.keys()
    for task in cpu_rows:
        kind, label, score, width, sha = cpu_rows[task]
        assert gpu_rows[task][0] == kind and gpu_rows[task][3:] == (width, sha), paths[task]
        if kind is None:
            assert abs(gpu_rows[task][2] - score) < 0.05, paths[task]
    agree = np.mean([gpu_rows[t][1] == cpu_rows[t][1] for t in cpu_rows if cpu_rows[t][0] is None])
    assert agree >= 0.9
    assert [cpu_rows[t][0] for t in (17, len(paths) - 1)] == ["empty", "truncated"]


# -- on CUDA -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_decode_matches_the_cpu_path(tmp_path, fallback):
    files = {
        "big-420.jpg": jpeg(photo(1600, 1200, 1)),
        "portrait-444.jpg": jpeg(photo(900, 1300, 2), subsampling=0),
        "progressive.jpg": jpeg(photo(1400, 1000, 3), progressive=True),
        "grey.jpg": jpeg(photo(800, 640, 4), mode="L"),
        "turned.jpg": jpeg(photo(1200, 800, 5), orientation=6),
        "small.jpg": jpeg(photo(300, 260, 6)),
    }
    paths = write_files(tmp_path, files)
    if REAL_PHOTOS.is_dir():
        paths += sorted(str(p) for p in REAL_PHOTOS.rglob("*.jpg"))[::5]
    batch, routed, decoder = decode_on(paths, "cuda", fallback)
    assert batch.pixels.is_cuda and decoder.fell_back == 0
    expected_routed = [p for p in paths if "progressive" not in p and "catalog-photos" not in p]
    assert [paths[r] for r in routed] == expected_routed
    pixels = batch.pixels.cpu().numpy()
    worst = (0.0, 0.0)
    for row, path in enumerate(paths):  # nvJPEG's rows, and the workers' (progressive) rows
        mean, p99 = assert_within_tolerance(pixels[row], load_image(path).pixels, path)
        worst = (max(worst[0], mean), max(worst[1], p99))
    for path, direct in zip(paths, gpu_code_path(paths, "cuda"), strict=True):  # progressive ones too
        mean, p99 = assert_within_tolerance(direct, load_image(path).pixels, path)
        worst = (max(worst[0], mean), max(worst[1], p99))
    print(
        f"nvJPEG vs the CPU path on {len(paths)} images: worst mean {worst[0]:.3f}, worst p99 {worst[1]:.1f}"
    )


@pytest.mark.gpu
def test_run_with_gpu_decode_equals_cpu_decode(tiny_model, small_catalog, tmp_path):
    folder = tmp_path / "catalog"
    write_files(folder, {"empty.jpg": b"", "cut.jpg": jpeg(photo(300, 300))[:900]})
    for path in small_catalog.rglob("*"):
        if path.suffix in (".jpg", ".png"):
            (folder / path.name).write_bytes(path.read_bytes())
    tables = {}
    for decode in ("cpu", "gpu"):
        out = tmp_path / f"out-{decode}"
        result = skutag(
            "-v", "run", tiny_model, folder, "--out", out, "--device", "cuda", "--decode", decode,
            "--batch-size", "16", "--max-error-rate", "0.5", "--no-progress",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        if decode == "gpu":
            assert "GPU decode: " in result.stderr and "GPU decode: 0 images" not in result.stderr
        tables[decode] = pq.read_table(out).sort_by("id").to_pylist()
    cpu, gpu = tables["cpu"], tables["gpu"]
    assert [r["id"] for r in cpu] == [r["id"] for r in gpu]
    for a, b in zip(cpu, gpu, strict=True):
        for column in ("status", "error_kind", "width", "height", "bytes", "sha256"):
            assert a[column] == b[column], (a["id"], column)
        if a["status"] == "ok":
            assert abs(a["score"] - b["score"]) < 0.05, a["id"]
    ok = [(a, b) for a, b in zip(cpu, gpu, strict=True) if a["status"] == "ok"]
    assert np.mean([a["label"] == b["label"] for a, b in ok]) >= 0.9
