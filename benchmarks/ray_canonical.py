"""The canonical Ray Data batch-inference pipeline, as Ray's documentation writes it: the peer of `--engine ray`.

    read_binary_files -> decode map_batches (tasks) -> ONNX Runtime actor (ActorPoolStrategy) -> write_parquet

What a user who follows the docs would write for the same job, with the documented
defaults where the docs leave them: `ray.init()` with this machine's CPUs (at least 3
logical ones on a 2-core machine, else the actor takes the only free CPU and the read
and decode tasks starve: ray-project/ray#44687), decode tasks of one CPU each, one
inference actor of one CPU whose ORT session uses ORT's default threads, batches of
`--batch-size`. It decodes with skutag's own `load_image` (the card's resize and crop),
so both pipelines compute the same pixels and the comparison is of the engines, not
of the decoders. Every row gets `predicted_at` (seconds since the epoch, set in the
actor when its batch is predicted), so the benchmark can time the steady state from
the first to the last row. A bad file would fail the job: the canonical pattern has no
error rows (the benchmark's photos are all good).

    python -m benchmarks.ray_canonical MODEL.onnx MANIFEST.csv OUT [--batch-size 32]
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np


def decode(batch: dict[str, np.ndarray], image_size: int, resize_size: int, interpolation: str) -> dict:
    """Bytes -> uint8 [rows, H, W, 3] with the card's preprocessing (skutag.images.load_image)."""
    from skutag.images import load_image

    images = [
        load_image(
            bytes(data), resize_size=resize_size, image_size=image_size, interpolation=interpolation
        ).pixels
        for data in batch["bytes"]
    ]
    return {"path": batch["path"], "image": np.stack(images)}


class OnnxPredictor:
    """One ONNX Runtime session per actor, as in the docs' batch-inference examples."""

    def __init__(self, model: str):
        import onnxruntime as ort

        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        probs = self.session.run(["probs"], {self.input: batch["image"]})[0]
        return {
            "path": batch["path"],
            "label_index": probs.argmax(axis=1).astype(np.int32),
            "score": probs.max(axis=1).astype(np.float32),
            "predicted_at": np.full(len(probs), time.time()),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("manifest", help="CSV with id,path columns (benchmarks.ray_suite writes it)")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    import ray

    from skutag.runtime import model_card

    card = model_card(args.model)
    with open(args.manifest, newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    ray.init(num_cpus=max(3, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.read_binary_files(paths, include_paths=True)
    ds = ds.map_batches(
        decode,
        batch_size=args.batch_size,
        fn_kwargs={
            "image_size": card.image_size,
            "resize_size": card.resize_size,
            "interpolation": card.interpolation,
        },
    )
    ds = ds.map_batches(
        OnnxPredictor,
        fn_constructor_args=(os.path.abspath(args.model),),
        batch_size=args.batch_size,
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=1),
    )
    ds.write_parquet(args.out)
    ray.shutdown()


if __name__ == "__main__":
    main()
