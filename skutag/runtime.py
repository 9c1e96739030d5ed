"""ONNX Runtime sessions on a named device, the card inside an ONNX file, and how each target runs.

One place applies docs/design.md's rules: ORT lists CUDA as available even when its
libraries are missing and then silently runs on the CPU, so we check the provider
that is actually active; `cuda` and `tensorrt` fail loudly, `auto` falls back and
says so. GPU sessions use one intra-op thread. Sessions are created in the main
process only (callers must not create them in DataLoader workers or before a fork).

Provider options come from the one model-format table (`skutag.artifacts.TARGETS`: each
precision row says how ONNX Runtime runs its files). A file's card names its target;
`create_session` refuses a target that cannot run on the requested device before any
provider is created, and sets TensorRT's precision flags from the row.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skutag.artifacts import TARGETS, Target, target_name
from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import DeviceError, InputError

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# Heuristic conv search: no exhaustive cuDNN benchmark per new input shape.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"}
DEFAULT_TRT_CACHE = Path.home() / ".cache" / "skutag" / "tensorrt"


def runtime_target(card: ModelCard) -> Target:
    """The table row of a card's export target (an int8 card without a target counts as `cpu`)."""
    return TARGETS[target_name(card.precision, card.int8_target)]


def check_device(card: ModelCard | None, device: str, model: object = "the model") -> None:
    """Refuse (InputError, exit 2) a file whose export target cannot run on `device`; no provider work."""
    if card is None or device != "tensorrt":
        return
    refusal = runtime_target(card).tensorrt_refusal
    if refusal:
        raise InputError(f"--device tensorrt: {model} {refusal}")


@dataclass
class SessionInfo:
    """What a session really runs on, for logs and summaries."""

    device: str  # cpu | cuda | tensorrt: the active one
    requested: str
    providers: list[str]
    fallback_reason: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def input_shape(card: ModelCard, batch_size: int) -> tuple[int, ...]:
    """The model input's shape at `batch_size`: uint8 NHWC or float NCHW, as the card says."""
    size = card.image_size
    return (batch_size, size, size, 3) if card.input_layout == "NHWC" else (batch_size, 3, size, size)


def provider_chain(
    device: str,
    card: ModelCard | None = None,
    *,
    input_name: str = "image",
    batch_size: int | None = None,
    trt_cache_dir: str | os.PathLike | None = None,
) -> list[Any]:
    """ORT's provider list for `device`, most preferred first, always ending in the CPU.

    TensorRT: precision flags from the card's row of `skutag.artifacts.TARGETS` (fp32 for a model
    without a card), engine and timing caches under `trt_cache_dir`, and with `batch_size`
    one optimisation profile of exactly that input shape (the shape `skutag run` feeds).
    """
    cuda = ("CUDAExecutionProvider", dict(CUDA_OPTIONS))
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if device == "tensorrt":
        target = runtime_target(card) if card is not None else TARGETS["fp32"]
        cache = str(Path(trt_cache_dir or DEFAULT_TRT_CACHE))
        Path(cache).mkdir(parents=True, exist_ok=True)
        trt: dict[str, Any] = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": target.trt_fp16,
            "trt_int8_enable": target.trt_int8,
        }
        if batch_size is not None and card is not None:
            shape = f"{input_name}:{'x'.join(map(str, input_shape(card, batch_size)))}"
            for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
                trt[key] = shape
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    raise ValueError(f"unknown device {device!r}")


def create_session(
    model: str | os.PathLike | bytes,
    device: str = "auto",
    *,
    card: ModelCard | None = None,
    input_name: str = "image",
    batch_size: int | None = None,
    trt_cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    session_config: dict[str, str] | None = None,
):
    """An `onnxruntime.InferenceSession` on `device`, and a `SessionInfo` saying what is active.

    Provider options come from `provider_chain` (the card's target row; `batch_size` fixes the
    TensorRT profile). For TensorRT the card (read from the file when not given) must name a
    target TensorRT can build, checked before any provider exists. Raises `DeviceError` when an
    explicitly requested GPU provider is not active, and `InputError` when the file is missing,
    not a loadable ONNX model, or of a target that cannot run on `device`. `session_config` adds
    ORT session config entries (e.g. `session.intra_op.allow_spinning`).
    """
    import onnxruntime as ort

    if not isinstance(model, bytes) and not Path(model).is_file():
        raise InputError(f"model file not found: {model}")
    if device == "tensorrt" and card is None and not isinstance(model, bytes):
        card = model_card(model)
    check_device(card, device, model if not isinstance(model, bytes) else "the model")
    if device in ("cuda", "tensorrt") and not gpu_present():  # fail before ORT logs library-load noise
        raise DeviceError(
            f"--device {device} was requested but there is no NVIDIA GPU on this machine; pass --device cpu or auto"
        )
    _preload_gpu_libraries(device)
    available = ort.get_available_providers()
    chain = {"card": card, "input_name": input_name, "batch_size": batch_size, "trt_cache_dir": trt_cache_dir}
    if device == "auto":
        if not gpu_present():
            reason = "no NVIDIA GPU on this machine"
        elif PROVIDERS["cuda"] in available:
            try:
                session, info = _make(ort, model, "cuda", threads, chain, session_config)
                if info.device == "cuda":
                    return session, info
                reason = "CUDA is listed but did not activate (missing CUDA/cuDNN/curand libraries?)"
            except DeviceError as exc:
                reason = str(exc)
        else:
            reason = "this onnxruntime has no CUDA provider"
        # No GPU at all is the ordinary case, not a warning on every CPU run (the summary records it).
        (log.info if not gpu_present() else log.warning)("device auto: using the CPU (%s)", reason)
        session, info = _make(ort, model, "cpu", threads, chain, session_config)
        info.requested, info.fallback_reason = "auto", reason
        return session, info
    session, info = _make(ort, model, device, threads, chain, session_config)
    if info.device != device:
        where = "" if gpu_present() else " (no NVIDIA GPU on this machine)"
        raise DeviceError(
            f"--device {device} was requested but ONNX Runtime activated {info.providers[0]}{where} "
            f"(available: {', '.join(available)}). Install the GPU extra (pip install 'skutag[gpu]') "
            "or pass --device cpu."
        )
    return session, info


def gpu_present() -> bool:
    """An NVIDIA driver device node exists (cheap; no CUDA initialisation)."""
    return os.path.exists("/dev/nvidiactl") or any(Path("/dev").glob("nvidia[0-9]*"))


def _make(ort, model, device: str, threads: int | None, chain: dict[str, Any], session_config=None):
    options = ort.SessionOptions()
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if device in ("cuda", "tensorrt"):
        options.intra_op_num_threads = 1
    elif threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only; we report fallbacks ourselves
    providers = provider_chain(device, **chain)
    try:
        source = model if isinstance(model, bytes) else os.fspath(model)
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        if device != "cpu" and "provider" in str(exc).lower():
            raise DeviceError(f"cannot create a {device} session: {exc}") from exc
        raise InputError(
            f"cannot load ONNX model {model if not isinstance(model, bytes) else '<bytes>'}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    active = session.get_providers()
    active_device = next((name for name, provider in PROVIDERS.items() if provider == active[0]), active[0])
    options = dict(providers[0][1]) if isinstance(providers[0], tuple) else {}
    return session, SessionInfo(device=active_device, requested=device, providers=active, options=options)


def _preload_gpu_libraries(device: str) -> None:
    """Let ORT find the CUDA/cuDNN libraries that pip's nvidia-* wheels (or torch) bring."""
    if device == "cpu" or not gpu_present():  # no GPU: nothing to load, and no "libcurand" noise on stdout
        return
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload(cuda=True, cudnn=True, msvc=False)
        except Exception as exc:  # best effort: the provider check after session creation decides
            log.debug("preload_dlls failed: %s", exc)


def model_card(path: str | os.PathLike) -> ModelCard | None:
    """The card of the ONNX file at `path` (see `file_card`), without creating a session."""
    import onnx

    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from exc
    return file_card(proto)


def file_card(proto) -> ModelCard | None:
    """The card in an ONNX ModelProto's metadata, or None. An int8 card written before the card
    recorded its target gets it from the graph: uint8 activations are `cpu`, int8 `tensorrt`."""
    text = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if not text:
        return None
    card = ModelCard.from_json(text)
    if card.precision == "int8" and card.int8_target is None:
        card = card.replace(int8_target=graph_int8_target(proto.graph))
    return card


def graph_int8_target(graph) -> str:
    """`cpu` (U8S8) or `tensorrt` (S8S8), from the zero-point type of the graph's QuantizeLinear nodes."""
    import onnx

    zero_point_types = {i.name: i.data_type for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            if zero_point_types.get(node.input[2]) == onnx.TensorProto.INT8:
                return "tensorrt"
            if zero_point_types.get(node.input[2]) == onnx.TensorProto.UINT8:
                return "cpu"
    return "cpu"
