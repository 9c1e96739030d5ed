"""The GPU suite: every CUDA figure of benchmarks/RESULTS.md (issue 13) from one call on a GPU machine.

    PYTHONPATH=. python3 -m benchmarks.gpu_suite --data bench-data --out "$OUT" [--images 10000]

Made for one call of at most 8 minutes on a fresh machine with no network (see
benchmarks/device/README.md): it uses the machine's python3 (torch, torchvision, onnx,
onnxruntime, pyarrow, ...) and the source tree, plus onnxruntime-gpu when the call
installed it first (benchmarks/device/install_ort_gpu.sh). Steps, in order of value,
each within what is left of `--budget-s` (a step that does not fit is recorded as skipped,
one that fails as failed, and the suite goes on):

  environment  GPU, versions, ORT's providers: a session on CUDA (and TensorRT) must really
               run there (get_providers()[0]); GPU decode available?
  train        `skutag train` ResNet-50 on the real photos, 2 epochs, mixed precision: images/s
  export       that run to fp32 and fp16 ONNX (int8 for TensorRT when TensorRT is active)
  model_only   ORT CUDA, IO binding, fp32 and fp16 at batch 1, 32, 256: images/s (median)
  decode       GPU decode alone (baseline and progressive photos) vs the CPU path per core
  end_to_end   `skutag run` fp16 --device cuda --batch-size 256 on --images real photos
               (repeated through a manifest), --decode cpu and --decode gpu, and each as a
               fraction of model-only
  tests        the `gpu`-marked tests
  tensorrt     model-only for TensorRT fp16 and int8, batch 1, 32, 256, when TensorRT is active

Writes OUT/gpu-suite.json (everything, with machine, versions and commands) and
OUT/gpu-suite.md (the tables), after every step, so a call cut short still returns them.

The machine has the source tree and no install: when `skutag.trainer` does not import, the
suite puts benchmarks/device/ first on PYTHONPATH, whose sitecustomize.py maps the stage
folders onto `skutag.*` as an install does, in this process and every command it starts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skutag.bench.latency import Timing

BATCH_SIZES = (1, 32, 256)
DEVICE_DIR = Path(__file__).resolve().parent / "device"


def source_tree() -> bool:
    """Make `skutag.trainer`, ... importable from a bare checkout (benchmarks/device/sitecustomize.py);
    True if that was needed."""
    import importlib.util

    try:
        if importlib.util.find_spec("skutag.trainer") is not None:
            return False
    except ModuleNotFoundError:
        pass
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(DEVICE_DIR), os.environ.get("PYTHONPATH")) if p
    )
    spec = importlib.util.spec_from_file_location("skutag_source_tree", DEVICE_DIR / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # this process: the finder; the commands it starts: PYTHONPATH
    return True


class Suite:
    """Runs steps within a time budget and keeps every result in one JSON/Markdown pair."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.deadline, self.started = out, time.monotonic() + budget_s, time.monotonic()
        self.results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, needs_s: float, function: Callable[[], Any]) -> Any:
        record: dict[str, Any] = {}
        self.results["steps"][name] = record
        if self.left() < needs_s:
            record.update(status="skipped", reason=f"{self.left():.0f} s left, needs about {needs_s:.0f}")
            print(f"[{name}] skipped: {record['reason']}", flush=True)
            self.save()
            return None
        print(f"[{name}] ...", flush=True)
        started = time.monotonic()
        try:
            result = function()
            record.update(status="ok", result=result)
        except Exception as exc:  # record it and go on: one broken step must not hide the others
            result = None
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        record["seconds"] = round(time.monotonic() - started, 1)
        print(f"[{name}] {record['status']} in {record['seconds']} s: {_short(record)}", flush=True)
        self.save()
        return result

    def save(self) -> None:
        self.results["wall_s"] = round(time.monotonic() - self.started, 1)
        (self.out / "gpu-suite.json").write_text(json.dumps(self.results, indent=2, default=str))
        (self.out / "gpu-suite.md").write_text(markdown(self.results))


def _short(record: dict[str, Any]) -> str:
    text = json.dumps(record.get("result", record.get("error")), default=str)
    return text if len(text) < 400 else text[:400] + " ..."


def sh(command: list[Any], timeout: float, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command with this python on the source tree; output kept in `log`."""
    command = [str(c) for c in command]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(Path.cwd())) if p)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if log is not None:
        log.write_text(f"$ {' '.join(command)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def skutag(*args: Any) -> list[Any]:
    return [sys.executable, "-m", "skutag", *args]


# -- steps -------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch
    import torchvision
    from skutag.batchrun.decode.gpu import gpu_decode_unavailable

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_path": str(Path(ort.__file__).parent),
        "available_providers": ort.get_available_providers(),
        "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count(),
    }
    query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
    try:
        smi = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except OSError as exc:
        info["nvidia_smi"] = f"nvidia-smi: {exc}"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["torch_cuda"] = torch.version.cuda
    info["active"] = {}
    for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if provider not in info["available_providers"]:
            info["active"][provider] = "not in this onnxruntime"
            continue
        try:
            session = ort.InferenceSession(
                _tiny_onnx(), providers=[provider, "CPUExecutionProvider"]
            )  # tiny: no TensorRT build time
            info["active"][provider] = session.get_providers()
        except Exception as exc:
            info["active"][provider] = f"failed: {type(exc).__name__}: {exc}"[:500]
    info["cuda_active"] = _active(info, "CUDAExecutionProvider")
    info["tensorrt_active"] = _active(info, "TensorrtExecutionProvider")
    info["gpu_decode"] = gpu_decode_unavailable("cuda", "bilinear") or "available"
    if not info["cuda_active"]:
        print(
            "ONNX Runtime's CUDA provider is NOT active: model-only and `skutag run --device cuda` are "
            "skipped; install onnxruntime-gpu first (benchmarks/device/install_ort_gpu.sh)",
            flush=True,
        )
    return info


def _active(info: dict[str, Any], provider: str) -> bool:
    providers = info["active"].get(provider)
    return isinstance(providers, list) and providers[0] == provider


def _tiny_onnx() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)  # ORT >= 1.16
    return model.SerializeToString()


def train(data: Path, work: Path, timeout: float) -> dict[str, Any]:
    run = work / "run"
    command = skutag(
        "train", data / "catalog-photos", "--out", run, "--arch", "resnet50", "--weights", "none",
        "--freeze", "none", "--augment", "none", "--epochs", "2", "--batch-size", "64",
        "--image-size", "224", "--val-split", "0.2", "--amp", "auto", "--device", "cuda",
    )  # fmt: skip
    result = sh(command, timeout, work / "train.log")
    if result.returncode != 0:
        raise RuntimeError(f"skutag train exited {result.returncode}: {result.stderr.strip()[-800:]}")
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    return {
        "command": " ".join(map(str, command[1:])),
        "images_per_s_by_epoch": [round(float(row["images_per_s"]), 1) for row in history],
        "images_per_s": round(float(history[-1]["images_per_s"]), 1),  # epoch 2: cuDNN warm
    }


def export(work: Path, data: Path, tensorrt: bool, timeout: float) -> dict[str, str]:
    run = work / "run"
    if not (run / "best.safetensors").exists():  # training failed: random weights, same graph
        from benchmarks.common import random_run

        random_run(run, "resnet50", 6, 224)
    models = {}
    jobs = {"fp32": [], "fp16": ["--precision", "fp16"]}
    if tensorrt:
        jobs["int8-tensorrt"] = [
            "--precision", "int8", "--int8-target", "tensorrt", "--calib", data / "clothing", "--calib-size", "128",
        ]  # fmt: skip
    for name, extra in jobs.items():
        path = work / f"resnet50-{name}.onnx"
        result = sh(
            skutag("export", run, "--out", path, *extra, "--no-check"), timeout, work / f"export-{name}.log"
        )
        if result.returncode != 0:
            raise RuntimeError(f"export {name} exited {result.returncode}: {result.stderr.strip()[-800:]}")
        models[name] = str(path)
    return models


def model_only(models: dict[str, str], device: str, names: list[str], trt_cache: Path) -> dict[str, Any]:
    """images/s = batch / median latency of session.run_with_iobinding, inputs rotated among 3 buffers."""
    import torch
    from skutag.batchrun.predict.model import read_contract

    from skutag.runtime import create_session

    table: dict[str, Any] = {}
    for name in names:
        contract = read_contract(models[name])
        for batch_size in BATCH_SIZES:
            started = time.perf_counter()
            session, info = create_session(
                contract.path, device, card=contract.card, input_name=contract.input_name,
                batch_size=batch_size, trt_cache_dir=trt_cache,
            )  # fmt: skip
            setup_s = time.perf_counter() - started
            size = contract.card.image_size
            generator = torch.Generator(device="cuda").manual_seed(batch_size)
            inputs = [
                torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, device="cuda", generator=generator)
                for _ in range(3)
            ]  # fmt: skip
            scores = torch.empty(
                (batch_size, contract.card.num_classes),
                dtype=_scores_dtype(session, contract.scores_output),
                device="cuda",
            )
            binding = session.io_binding()
            binding.bind_output(
                contract.scores_output,
                "cuda",
                0,
                _numpy(scores.dtype),
                tuple(scores.shape),
                scores.data_ptr(),
            )
            torch.cuda.synchronize()

            timing = _latencies(session, binding, contract, inputs, warmup=5 if batch_size == 256 else 20)
            median = timing.p50_ms / 1000
            table[f"{name} b{batch_size}"] = {
                "model": name, "device": info.device, "providers": info.providers[:1], "batch": batch_size,
                "median_ms": round(median * 1000, 3), "images_per_s": round(batch_size / median, 1),
                "runs": timing.repetitions, "setup_s": round(setup_s, 1),
            }  # fmt: skip
            print(
                f"  {name} batch {batch_size}: {batch_size / median:,.0f} images/s on {info.device}",
                flush=True,
            )
    return table


def _latencies(session, binding, contract, inputs: list, *, warmup: int) -> Timing:
    """Latencies of `run_with_iobinding`, the input rebound to the next of `inputs` each time (at least
    10 runs, then up to 2 s or 400 runs: `skutag.bench.latency.time_calls`); ORT's run returns when
    the GPU is done."""
    import numpy as np

    from skutag.bench.latency import time_calls

    def run(i: int) -> None:
        tensor = inputs[i % len(inputs)]
        binding.bind_input(contract.input_name, "cuda", 0, np.uint8, tuple(tensor.shape), tensor.data_ptr())
        session.run_with_iobinding(binding)

    return time_calls(
        run, len(inputs[0]), warmup=warmup, min_repetitions=10, min_seconds=2.0, max_repetitions=400
    )


def _scores_dtype(session, name: str):
    import torch

    output = next(o for o in session.get_outputs() if o.name == name)
    return torch.float16 if output.type == "tensor(float16)" else torch.float32


def _numpy(dtype):
    import numpy as np
    import torch

    return np.float16 if dtype == torch.float16 else np.float32


def decode(data: Path) -> dict[str, Any]:
    """GPU decode + resize alone on 256-image batches, baseline (clothing) and progressive (catalog)
    photos; beside it the CPU path's ms per image on one core (the work-sum bound's decode term)."""
    import numpy as np
    import torch
    from skutag.batchrun.decode.loader import Preprocess

    from skutag.images import load_image

    preprocess = Preprocess(224, 256, "bilinear")
    figures: dict[str, Any] = {}
    for folder in ("clothing", "catalog-photos"):
        files = sorted((data / folder).rglob("*.jpg"))[:256]
        tensors = [torch.from_numpy(np.fromfile(f, dtype=np.uint8)) for f in files]
        gpu_rate = _decode_rate(tensors, preprocess)
        cpu_started = time.process_time()
        for f in files[:40]:
            load_image(f)
        cpu_ms = (time.process_time() - cpu_started) / 40 * 1000
        figures[folder] = {
            "images": len(files),
            "gpu_decode_resize_images_per_s": round(gpu_rate, 1),
            "cpu_path_ms_per_image_one_core": round(cpu_ms, 2),
            "cpu_path_images_per_s_all_cores": round(1000 / cpu_ms * (os.cpu_count() or 1), 1),
        }
    return figures


def _decode_rate(tensors: list, preprocess) -> float:
    """Images/s of decode_jpegs (one call per batch) + resize_crop per image on CUDA, synchronised."""
    import torch
    from skutag.batchrun.decode.gpu import decode_jpegs, resize_crop

    def once() -> None:
        for image in decode_jpegs(tensors, torch.device("cuda")):
            resize_crop(image[None], 1, preprocess)
        torch.cuda.synchronize()

    once()
    rounds, started = 0, time.perf_counter()
    while rounds < 3 or (time.perf_counter() - started < 3.0 and rounds < 20):
        once()
        rounds += 1
    return rounds * len(tensors) / (time.perf_counter() - started)


def end_to_end(models: dict[str, str], data: Path, work: Path, images: int, model_rate: float | None) -> dict:
    """`skutag run` from JPEG with --decode cpu and gpu, the real photos repeated through a manifest.

    Each repetition k has ids `rKKKK/...`, and --part-size is the number of photos, so every unit
    of the plan holds each photo once: every row is decoded (a unit decodes a shared uri once)."""
    from benchmarks.common import photos as image_files
    from benchmarks.common import repeated_manifest

    photos = image_files(data)
    manifest = repeated_manifest(photos, images, work / "manifest.csv")
    figures: dict[str, Any] = {"photos": len(photos), "images": images, "model": "fp16"}
    for mode in ("cpu", "gpu"):
        out = work / f"e2e-{mode}"
        command = skutag(
            "run", models["fp16"], manifest, "--out", out, "--device", "cuda", "--decode", mode,
            "--batch-size", "256", "--part-size", len(photos), "--no-progress", "--overwrite",
        )  # fmt: skip
        result = sh(command, 240, work / f"e2e-{mode}.log")
        if result.returncode != 0:
            figures[mode] = {"error": f"exit {result.returncode}: {result.stderr.strip()[-800:]}"}
            continue
        summary = json.loads((out / "_summary.json").read_text())
        rate = summary["images_per_s"]
        figures[mode] = {
            "command": " ".join(map(str, command[1:])),
            "images_per_s": round(rate, 1),
            "fraction_of_model_only": round(rate / model_rate, 3) if model_rate else None,
            **{k: summary.get(k) for k in ("rows", "ok", "errors", "decoded", "wall_s", "wait_s", "inference_s",
                                            "decode_s", "write_s", "device", "workers")},
        }  # fmt: skip
    if "images_per_s" in figures.get("cpu", {}) and "images_per_s" in figures.get("gpu", {}):
        figures["gpu_vs_cpu_decode"] = round(
            figures["gpu"]["images_per_s"] / figures["cpu"]["images_per_s"], 2
        )
    return figures


def tests(work: Path, timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "tests", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rA"]
    result = sh(command, timeout, work / "tests.log")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {
        "exit": result.returncode,
        "summary": lines[-1] if lines else result.stderr.strip()[-500:],
        "outcomes": [line for line in lines if line.startswith(("PASSED", "FAILED", "ERROR", "SKIPPED"))],
    }


# -- report ------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    steps = results["steps"]
    lines = [f"# GPU suite, {results['started']} ({results.get('wall_s', 0):.0f} s)", ""]
    env = steps.get("environment", {}).get("result") or {}
    if env:
        lines += [
            f"- GPU: {env.get('nvidia_smi')}; CPUs: {env.get('cpus')}",
            f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), torchvision {env.get('torchvision')}, "
            f"onnxruntime {env.get('onnxruntime')} from {env.get('onnxruntime_path')}",
            f"- ORT providers available: {env.get('available_providers')}; active: {env.get('active')}",
            f"- GPU decode: {env.get('gpu_decode')}",
            "",
        ]
    lines += ["| step | status | seconds | note |", "|---|---|---:|---|"]
    for name, record in steps.items():
        note = record.get("reason") or record.get("error") or ""
        lines.append(f"| {name} | {record['status']} | {record.get('seconds', '')} | {note[:200]} |")
    for key in ("model_only", "tensorrt"):
        table = steps.get(key, {}).get("result") or {}
        if table:
            lines += ["", f"## {key}: images/s (median latency)", "", "| model | device | batch | ms | images/s |",
                      "|---|---|---:|---:|---:|"]  # fmt: skip
            for row in table.values():
                lines.append(
                    f"| {row['model']} | {row['device']} | {row['batch']} | {row['median_ms']} | {row['images_per_s']:,} |"
                )
    for key in ("decode", "end_to_end", "train", "tests"):
        result = steps.get(key, {}).get("result")
        if result:
            lines += ["", f"## {key}", "", "```", json.dumps(result, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("bench-data"), help="catalog-photos/ and clothing/")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out/gpu-suite")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/skutag-gpu-suite"))
    parser.add_argument("--images", type=int, default=10_000, help="end to end: photos per `skutag run`")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting steps after this")
    args = parser.parse_args()
    mapped = source_tree()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    suite = Suite(args.out, args.budget_s)
    suite.results["source_tree_mapped"] = mapped
    env = suite.step("environment", 5, environment) or {}
    cuda, tensorrt = env.get("cuda_active", False), env.get("tensorrt_active", False)
    torch_cuda = env.get("cuda_available", False)  # torch (training, GPU decode) needs no onnxruntime-gpu
    if torch_cuda:
        suite.step("train", 60, lambda: train(data, args.work, min(120, suite.left())))
    models = suite.step("export", 30, lambda: export(args.work, data, tensorrt, min(150, suite.left()))) or {}
    table = {}
    if cuda and models:
        table = (
            suite.step("model_only", 30, lambda: model_only(models, "cuda", ["fp32", "fp16"], args.work))
            or {}
        )
    if torch_cuda:
        suite.step("decode", 20, lambda: decode(data))
    if cuda and models:
        rate = (table.get("fp16 b256") or {}).get("images_per_s")
        suite.step("end_to_end", 60, lambda: end_to_end(models, data, args.work, args.images, rate))
    suite.step("tests", 60, lambda: tests(args.work, min(240, suite.left())))
    if tensorrt and models:
        names = [n for n in ("fp16", "int8-tensorrt") if n in models]
        suite.step("tensorrt", 60, lambda: model_only(models, "tensorrt", names, args.work / "trt-cache"))
    suite.save()
    print((args.out / "gpu-suite.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
