"""Decode a batch's JPEGs on the GPU and resize and crop them there, as `skutag.images` does.

`GpuDecoder` takes a `Batch` from read-only workers (`batchrun.decode.loader`: JPEG bytes plus
the rows the workers decoded themselves) and returns it with `pixels` a uint8
`[batch_size, H, W, 3]` tensor on the device, padded to one shape, ready to be bound to
ONNX Runtime's input. Steps, per batch:

1. `torchvision.io.decode_jpeg(list, device=...)` decodes every JPEG in one call (nvJPEG on
   CUDA; the same call with device="cpu" runs libjpeg-turbo, which is how the CPU tests
   exercise this code). One bad file fails the whole call (no partial results), so a failed
   call is retried file by file; a file that still fails, or decodes to another size than
   its header says, is decoded by the CPU path in a contained process (`ContainedDecoder`):
   same pixels, same error kinds.
2. The geometry of `skutag.images.load_image`, on float tensors: Pillow decodes JPEGs with
   DCT scaling ("draft") at 1/2, 1/4 or 1/8 while the shorter side stays >= resize_size;
   here that is an average over the same a x a blocks (`draft_scale`, `avg_pool2d` with
   ceil_mode), then the EXIF orientation (flips and 90-degree turns, read from the header on
   the CPU), then the shorter side to `resize_size` (torchvision `Resize(int)` sizes of the
   drafted image) with antialiased bilinear (or bicubic) interpolation, the centre crop of
   `center_box`, rounding to uint8. Images of one stored size and orientation are resized
   in one call.

Pixel tolerance against the CPU path (`load_image`), per image, over all pixels and
channels: mean |difference| <= `MEAN_TOLERANCE` and 99th percentile <= `P99_TOLERANCE`
grey levels (of 255). Measured with this code on the CPU (libjpeg-turbo full decode +
block average vs Pillow's DCT-scaled decode) on all 690 real photos of ../shared/data:
baseline 400 px photos mean 0.14 (worst 0.16), p99 <= 1, max 1; progressive 1000-1580 px
catalog photos mean 0.14 (worst 0.34), p99 <= 4, max 15 (edges, where DCT scaling and a
block average differ most). tests/batchrun/test_decode_gpu.py asserts the bounds on the CPU; its
`gpu` tests assert the same bounds for nvJPEG.

CUDA streams: the decoder works on its own stream and synchronises it before each
`decode_jpeg` call (torchvision allocates the outputs on the caller's stream but writes
them from a private one, pytorch/vision#9606: nothing may still be queued on the caller's
stream) and after the batch is complete, so the batch it returns is ready for ORT's stream.
"""

from __future__ import annotations

import io
import logging
import math
import time
import warnings
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from skutag.images import center_box, resized_size

from .contained import ContainedDecoder
from .loader import Batch, Preprocess

log = logging.getLogger(__name__)

MEAN_TOLERANCE = 1.0  # mean |GPU path - CPU path| per image, grey levels
P99_TOLERANCE = 6.0  # 99th percentile of |GPU path - CPU path| per image, grey levels (measured <= 4)
INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic"}  # the card's names -> torch's
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def draft_scale(width: int, height: int, resize_size: int) -> int:
    """The DCT scale (1, 2, 4 or 8) Pillow's JPEG draft picks in `skutag.image_pixels.draft`."""
    scale = resize_size / min(width, height)
    if scale >= 1:
        return 1
    wanted = (math.ceil(width * scale), math.ceil(height * scale))
    factor = min(width // wanted[0], height // wanted[1])
    return next(s for s in (8, 4, 2, 1) if factor >= s)


def orient(images: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to `[..., H, W]` images, as Pillow's `ImageOps.exif_transpose`."""
    if orientation == 2:
        return images.flip(-1)
    if orientation == 3:
        return images.flip(-2, -1)
    if orientation == 4:
        return images.flip(-2)
    if orientation == 5:
        return images.transpose(-2, -1)
    if orientation == 6:
        return images.rot90(-1, (-2, -1))
    if orientation == 7:
        return images.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return images.rot90(1, (-2, -1))
    return images


def resize_crop(images: torch.Tensor, orientation: int, preprocess: Preprocess) -> torch.Tensor:
    """uint8 `[n, 3, h, w]` as stored in the file -> uint8 `[n, S, S, 3]`, the CPU path's geometry."""
    height, width = images.shape[-2:]
    x = images.float()
    scale = draft_scale(width, height, preprocess.resize_size)
    if scale > 1:
        x = F.avg_pool2d(x, scale, scale, ceil_mode=True)
    x = orient(x, orientation)
    height, width = x.shape[-2:]
    new_width, new_height = resized_size(width, height, preprocess.resize_size)
    if (new_width, new_height) != (width, height):
        mode = INTERPOLATIONS[preprocess.interpolation]
        x = F.interpolate(x, size=(new_height, new_width), mode=mode, antialias=True, align_corners=False)
    left, top, right, bottom = center_box((new_width, new_height), preprocess.image_size)
    x = x[..., top:bottom, left:right]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def decode_jpegs(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode to uint8 `[3, h, w]` RGB on `device`; None for a file the decoder refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not tensors:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notice, libjpeg's warnings
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except Exception:  # one bad file fails the whole call: find it
            pass
        decoded: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
            except Exception:
                decoded.append(None)
        return decoded


class GpuDecoder:
    """Batch (read-only workers) -> Batch with `pixels` uint8 `[batch_size, H, W, 3]` on `device`.

    `host_output`: hand the pixels back in host memory (a session that runs on the CPU).
    """

    def __init__(
        self,
        preprocess: Preprocess,
        *,
        device: str | torch.device,
        batch_size: int,
        fallback: ContainedDecoder,
        host_output: bool = False,
    ):
        if preprocess.interpolation not in INTERPOLATIONS:
            raise ValueError(f"the GPU decoder cannot resize with {preprocess.interpolation!r}")
        self.preprocess, self.batch_size, self.fallback = preprocess, batch_size, fallback
        self.device = torch.device(device)
        self.host_output = host_output
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.decoded = 0  # images decoded by this decoder
        self.fell_back = 0  # images it handed to the CPU path
        self.seconds = 0.0

    def __call__(self, batch: Batch) -> Batch:
        started = time.perf_counter()
        if self.stream is None:
            self._decode(batch)
        else:
            with torch.cuda.stream(self.stream):
                self.stream.synchronize()
                self._decode(batch)
                self.stream.synchronize()  # the batch is complete before ORT's stream reads it
        self.seconds += time.perf_counter() - started
        return batch

    def _decode(self, batch: Batch) -> None:
        rows, size, device = len(batch), self.preprocess.image_size, self.device
        encoded = batch.encoded
        jobs = encoded.rows() if encoded is not None else []
        images = decode_jpegs([encoded.row(r) for r in jobs], device)
        out = torch.zeros((max(rows, self.batch_size), size, size, 3), dtype=torch.uint8, device=device)
        if batch.pixels is not None:  # rows the workers decoded
            for_gpu = set(jobs)
            done = [r for r in range(rows) if batch.ok[r] and r not in for_gpu]
            if done:
                out[done] = batch.pixels[done].to(device)
        groups: dict[tuple[int, int, int], list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for row, image in zip(jobs, images, strict=True):
            orientation = int(encoded.orientations[row])
            if image is None or tuple(image.shape) != (3, *self._stored_size(batch, row, orientation)):
                self._fall_back(batch, row, out)
                continue
            groups[(image.shape[1], image.shape[2], orientation)].append((row, image))
        for (_h, _w, orientation), members in groups.items():
            index = torch.tensor([row for row, _image in members], device=device)
            stacked = torch.stack([image for _row, image in members])
            out.index_copy_(0, index, resize_crop(stacked, orientation, self.preprocess))
            self.decoded += len(members)
        batch.pixels = out.cpu() if self.host_output else out
        batch.encoded = None

    @staticmethod
    def _stored_size(batch: Batch, row: int, orientation: int) -> tuple[int, int]:
        """(height, width) the decoder must return: the header's size, before orientation."""
        width, height = int(batch.widths[row]), int(batch.heights[row])
        return (width, height) if orientation in _SWAPPING_ORIENTATIONS else (height, width)

    def _fall_back(self, batch: Batch, row: int, out: torch.Tensor) -> None:
        data = batch.encoded.row(row).numpy().tobytes()
        sample = self.fallback.decode(int(batch.indices[row]), data)
        self.fell_back += 1
        batch.decode_seconds += sample.seconds
        batch.ok[row] = sample.pixels is not None
        batch.error_kinds[row], batch.errors[row] = sample.error_kind, sample.error
        batch.widths[row] = -1 if sample.width is None else sample.width
        batch.heights[row] = -1 if sample.height is None else sample.height
        if sample.pixels is not None:
            out[row] = torch.from_numpy(sample.pixels).to(self.device)


def gpu_decode_unavailable(device: str, interpolation: str) -> str | None:
    """Why this run cannot decode on the GPU (None: it can). May initialise CUDA (fork-safe for
    workers that never touch CUDA); creates no ONNX Runtime session."""
    from skutag.runtime import PROVIDERS, gpu_present

    if device == "cpu":
        return "the run's --device is cpu"
    if interpolation not in INTERPOLATIONS:
        return f"the model resizes with {interpolation!r}; the GPU decoder has {', '.join(INTERPOLATIONS)}"
    if not gpu_present():
        return "there is no NVIDIA GPU on this machine"
    import onnxruntime

    if PROVIDERS["cuda"] not in onnxruntime.get_available_providers():
        return "this onnxruntime has no CUDA provider (inference would run on the CPU)"
    if not torch.cuda.is_available():
        return "torch cannot use CUDA here"
    try:
        decoded = decode_jpegs([_tiny_jpeg()], torch.device("cuda"))[0]
    except Exception as exc:  # torchvision without nvJPEG, a CUDA error
        return f"torchvision cannot decode JPEGs on CUDA ({type(exc).__name__}: {exc})"
    if decoded is None:
        return "torchvision cannot decode JPEGs on CUDA (a test JPEG failed)"
    return None


def resolve_decode(requested: str, device: str, interpolation: str) -> str:
    """`--decode auto|cpu|gpu` -> where JPEGs are decoded: "cpu" or "cuda".

    auto: the GPU when this run's inference can use CUDA and torchvision decodes there;
    gpu: the GPU, or `DeviceError` (one line, exit 1) saying why not.
    """
    if requested == "cpu":
        return "cpu"
    if requested not in ("auto", "gpu"):
        raise ValueError(f"unknown --decode {requested!r}")
    reason = gpu_decode_unavailable(device, interpolation)
    if reason is None:
        return "cuda"
    if requested == "gpu":
        from skutag.errors import DeviceError

        raise DeviceError(f"--decode gpu: {reason}; pass --decode cpu or auto")
    log.info("decoding on the CPU: %s", reason)
    return "cpu"


def _tiny_jpeg() -> torch.Tensor:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(buffer, format="JPEG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def pixel_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean, 99th percentile) of |a - b| over all pixels and channels: what the tolerance bounds."""
    difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(difference.mean()), float(np.percentile(difference, 99))
