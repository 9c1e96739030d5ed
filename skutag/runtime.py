"""ONNX Runtime sessions on a named device, and the card inside an ONNX file.

One place applies DESIGN.md's rules: ORT lists CUDA as available even when its
libraries are missing and then silently runs on the CPU, so we check the provider
that is actually active; `cuda` and `tensorrt` fail loudly, `auto` falls back and
says so. GPU sessions use one intra-op thread. Sessions are created in the main
process only (callers must not create them in DataLoader workers or before a fork).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skutag.card import METADATA_KEY, ModelCard
from skutag.errors import DeviceError, InputError

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass
class SessionInfo:
    """What a session really runs on, for logs and summaries."""

    device: str  # cpu | cuda | tensorrt: the active one
    requested: str
    providers: list[str]
    fallback_reason: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def provider_chain(
    device: str,
    *,
    trt_cache_dir: str | os.PathLike | None = None,
    trt_fp16: bool = False,
    trt_int8: bool = False,
    trt_profile: tuple[str, tuple[int, ...], tuple[int, ...]] | None = None,
) -> list[Any]:
    """ORT's provider list for `device`, most preferred first, always ending in the CPU."""
    cuda = (
        "CUDAExecutionProvider",
        {
            # Heuristic conv search: no exhaustive cuDNN benchmark per new input shape.
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": "1",
        },
    )
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if device == "tensorrt":
        cache = str(Path(trt_cache_dir or Path.home() / ".cache" / "skutag" / "tensorrt"))
        Path(cache).mkdir(parents=True, exist_ok=True)
        trt: dict[str, Any] = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": trt_fp16,
            "trt_int8_enable": trt_int8,
        }
        if trt_profile is not None:
            name, low, high = trt_profile
            trt["trt_profile_min_shapes"] = f"{name}:{'x'.join(map(str, low))}"
            trt["trt_profile_opt_shapes"] = f"{name}:{'x'.join(map(str, high))}"
            trt["trt_profile_max_shapes"] = f"{name}:{'x'.join(map(str, high))}"
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    raise ValueError(f"unknown device {device!r}")


def create_session(
    model: str | os.PathLike | bytes,
    device: str = "auto",
    *,
    threads: int | None = None,
    session_config: dict[str, str] | None = None,
    **provider_options: Any,
):
    """An `onnxruntime.InferenceSession` on `device`, and a `SessionInfo` saying what is active.

    Raises `DeviceError` when an explicitly requested GPU provider is not active, and
    `InputError` when the file is missing or not a loadable ONNX model. `session_config` adds
    ORT session config entries (e.g. `session.intra_op.allow_spinning`).
    """
    import onnxruntime as ort

    if not isinstance(model, bytes) and not Path(model).is_file():
        raise InputError(f"model file not found: {model}")
    if device in ("cuda", "tensorrt") and not gpu_present():  # fail before ORT logs library-load noise
        raise DeviceError(
            f"--device {device} was requested but there is no NVIDIA GPU on this machine; pass --device cpu or auto"
        )
    _preload_gpu_libraries(device)
    available = ort.get_available_providers()
    if device == "auto":
        if not gpu_present():
            reason = "no NVIDIA GPU on this machine"
        elif PROVIDERS["cuda"] in available:
            try:
                session, info = _make(ort, model, "cuda", threads, provider_options, session_config)
                if info.device == "cuda":
                    return session, info
                reason = "CUDA is listed but did not activate (missing CUDA/cuDNN/curand libraries?)"
            except DeviceError as exc:
                reason = str(exc)
        else:
            reason = "this onnxruntime has no CUDA provider"
        log.warning("device auto: using the CPU (%s)", reason)
        session, info = _make(ort, model, "cpu", threads, provider_options, session_config)
        info.requested, info.fallback_reason = "auto", reason
        return session, info
    session, info = _make(ort, model, device, threads, provider_options, session_config)
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


def _make(
    ort, model, device: str, threads: int | None, provider_options: dict[str, Any], session_config=None
):
    options = ort.SessionOptions()
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if device in ("cuda", "tensorrt"):
        options.intra_op_num_threads = 1
    elif threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only; we report fallbacks ourselves
    providers = provider_chain(device, **provider_options)
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
    return session, SessionInfo(device=active_device, requested=device, providers=active)


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


def session_card(session) -> ModelCard | None:
    """The skutag card inside a session's model, or None for a model skutag did not export."""
    metadata = session.get_modelmeta().custom_metadata_map
    text = metadata.get(METADATA_KEY)
    return ModelCard.from_json(text) if text else None
