"""What every benchmark suite shares, written once.

- the report header: machine, versions, command and date (`skutag.bench.machine`) plus the load
  average, which every figure in RESULTS.md carries;
- the real photos of `../shared/data` and sets of any size made from them (symlinks, copies or a
  CSV manifest that names each photo many times under distinct ids);
- random-weight models (a run directory as the trainer writes it, or an fp32 ONNX file): speed
  and size do not depend on the weights;
- whole processes measured from outside: wall time and peak memory read from /proc while they run;
- model-only timing of the ONNX Runtime session `skutag run` would open (`skutag.bench.latency`);
- stratified k-fold splits of an ImageFolder tree, as symlink trees.

Only the standard library is imported here; skutag, torch and ONNX Runtime are imported by the
helper that needs them, so a suite's `--help` (and the GPU machine's bare python3) stays light.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skutag.bench.latency import Timing

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"  # the real photos: catalog-photos/ (349) and clothing/ (341)


# -- the report header -----------------------------------------------------------------------------


def load_average() -> float:
    """The 1-minute load average (every figure is recorded with it: a busy machine slows all)."""
    return os.getloadavg()[0]


def header(*packages: str, before: float | None = None) -> str:
    """Markdown lines: machine, versions of skutag and `packages`, command, date and the load average
    (now, and `before` when the suite took it at its start with `load_average()`)."""
    from skutag.bench.machine import machine_info, markdown_header

    load = (
        f"before {before:.2f}, now {load_average():.2f}"
        if before is not None
        else f"now {load_average():.2f}"
    )
    return markdown_header(machine_info(*packages)) + f"- load average (1 min): {load}\n"


def skutag_command(*args: object) -> list[str]:
    """`python -m skutag ARGS` with this interpreter."""
    return [sys.executable, "-m", "skutag", *map(str, args)]


# -- real photos, repeated -------------------------------------------------------------------------


def photos(root: str | os.PathLike = DATA) -> list[Path]:
    """The image files under `root`, sorted, as every stage lists them (`skutag.listing.walk_images`)."""
    from skutag.bench.baselines import image_files

    files = image_files(root)
    if not files:
        raise SystemExit(f"no photos under {root}")
    return files


def repeated_links(files: Sequence[Path], count: int, folder: Path) -> Path:
    """`count` symlinks in `folder` cycling over `files` (distinct names, same pixels); reused when complete."""
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(count):
            source = files[i % len(files)]
            (folder / f"{i:07d}{source.suffix.lower()}").symlink_to(Path(source).resolve())
        (folder / ".complete").write_text("")
    return folder


def repeated_copies(files: Sequence[Path], count: int, root: Path) -> list[Path]:
    """`count` real files (copies, in folders of 500) cycling over `files`: a set whose files can change."""
    copies = []
    for i in range(count):
        source = Path(files[i % len(files)])
        target = root / f"batch-{i // 500:02d}" / f"{i:05d}-{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copies.append(target)
    return copies


def repeated_manifest(files: Sequence[Path], rows: int, path: Path, *, scattered_ids: bool = False) -> Path:
    """A CSV manifest (`id,path`) of `rows` rows cycling over `files`.

    Ids are `rKKKK/NNNNN` (repetition K, photo N): within one repetition every photo appears once, so
    a part size of at most `len(files)` keeps every unit's images distinct and every row is decoded.
    `scattered_ids`: ids `sku-...` not in file order (as a catalog export lists them), for planning.
    """
    resolved = [str(Path(f).resolve()) for f in files]
    n = len(resolved)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path"])
        for row in range(rows):
            ident = f"sku-{(row * 7919) % rows:09d}" if scattered_ids else f"r{row // n:04d}/{row % n:05d}"
            writer.writerow([ident, resolved[row % n]])
    return path


# -- random-weight models --------------------------------------------------------------------------


def random_run(out: Path, arch: str = "resnet50", classes: int = 6, image_size: int = 224) -> Path:
    """A run directory (`best.safetensors`, `card.json`) with random weights, as the trainer writes one."""
    import torch
    from skutag.trainer.model import build_model
    from skutag.trainer.weights import save_weights

    from skutag.card import ModelCard

    torch.manual_seed(0)
    card = ModelCard.for_training(arch, [f"class_{i}" for i in range(classes)], image_size=image_size)
    save_weights(out / "best.safetensors", build_model(arch, classes, "none").eval(), card)
    card.save(out / "card.json")
    return out


def random_onnx(
    path: Path, arch: str = "resnet50", classes: int | Sequence[str] = 10, image_size: int = 224
) -> Path:
    """An fp32 ONNX file of `arch` with random weights (skutag's exporter, card embedded); kept if present."""
    if path.exists():
        return path
    import torch
    from skutag.exporter.graph import export_fp32
    from skutag.trainer.model import build_model

    from skutag.card import ModelCard

    names = [f"class{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    torch.manual_seed(0)
    card = ModelCard.for_training(arch, names, image_size=image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_fp32(build_model(arch, len(names), "none").eval(), card, path)
    return path


# -- whole processes: wall time and peak memory ----------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One process run to its end, measured from outside."""

    returncode: int
    wall_s: float
    peak_rss_mib: float  # VmHWM of the process itself (its own high-water mark after exec)
    peak_anon_mib: float  # RssAnon: what the process allocated, shared-library pages left out
    peak_pss_mib: float | None  # with tree=True: PSS of the process and all its descendants
    stderr: str

    @property
    def last_error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def measure(
    command: Sequence[object],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    tree: bool = False,
    interval: float = 0.05,
) -> Measured:
    """Run `command`, sampling /proc every `interval` s: the process's VmHWM and RssAnon and, with
    `tree`, the PSS of it and its children (pages a forked worker shares with its parent count once).

    Sampled from /proc rather than `wait4`'s ru_maxrss, which keeps the high-water mark from before
    `exec`, i.e. counts the RSS of the process it was forked from (a suite that has imported torch).
    """
    command = [str(c) for c in command]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:  # a pipe could fill up and stall the process
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env, cwd=cwd)
        peak = anon = pss = 0
        while process.poll() is None:
            status = _status(process.pid)
            peak, anon = max(peak, status.get("VmHWM", 0)), max(anon, status.get("RssAnon", 0))
            if tree:
                pss = max(pss, tree_pss(process.pid))
            time.sleep(interval)
        wall = time.perf_counter() - started
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    return Measured(process.returncode, wall, peak / 1024, anon / 1024, pss / 2**20 if tree else None, stderr)


def _status(pid: int) -> dict[str, int]:
    """VmHWM and RssAnon (KiB) of a process, from /proc/PID/status."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "RssAnon"):
                    found[name] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return found


def tree_pss(pid: int) -> int:
    """Proportional set size in bytes of `pid` and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, StopIteration):
            continue
    return total


# -- model-only timing -----------------------------------------------------------------------------


def session_step(
    model: str | os.PathLike, device: str = "cpu", batch_size: int = 32, threads: int | None = None
) -> Callable[[int], None]:
    """One inference of the session `skutag run` would open for `model`, on random uint8 batches
    (four sets, rotated by the call number); on a GPU with IO binding (inputs and outputs stay on
    the device, so the call times the model alone)."""
    from skutag.batchrun.predict.infer import open_session
    from skutag.batchrun.predict.model import read_contract

    from skutag.bench.latency import random_inputs

    contract = read_contract(model)
    session, info = open_session(
        contract, device, batch_size=batch_size, threads=threads if device == "cpu" else None
    )
    inputs = random_inputs(contract.card, batch_size)
    name = contract.input_name
    if info.device == "cpu":
        return lambda i: session.run(None, {name: inputs[i % len(inputs)]})

    import onnxruntime as ort

    values = [ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0) for x in inputs]
    binding = session.io_binding()
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", 0)

    def step(i: int) -> None:
        binding.bind_ortvalue_input(name, values[i % len(values)])
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return step


def model_only(
    model: str | os.PathLike, device: str, batch_size: int, threads: int | None = None, **timing
) -> Timing:
    """Model-only latency and throughput (batch / p50) of `model`, as `skutag bench` measures them
    (`skutag.bench.latency.time_calls`: warm-up, then at least `min_repetitions` and `min_seconds`)."""
    from skutag.bench.latency import time_calls

    return time_calls(session_step(model, device, batch_size, threads), batch_size, **timing)


# -- k-fold splits of labelled photos --------------------------------------------------------------


def folds(root: Path, k: int, seed: int) -> list[tuple[list[Path], list[Path]]]:
    """Stratified k folds of the class folders' images: (train files, held-out files) per fold."""
    from sklearn.model_selection import StratifiedKFold

    root = Path(root).resolve()  # the listing gives absolute paths
    files = photos(root)
    labels = [f.relative_to(root).parts[0] for f in files]
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [([files[i] for i in a], [files[i] for i in b]) for a, b in splitter.split(files, labels)]


def link_tree(root: Path, files: Sequence[Path], out: Path) -> Path:
    """An ImageFolder view of `files` (under `root`) at `out`, as symlinks."""
    for f in files:
        dest = out / f.relative_to(Path(root).resolve())
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(f.resolve())
    return out


# -- planted near copies and byte copies (insight_suite and the insight tests) ---------------------

# name -> how a near copy is made from its original (PIL image -> PIL image, saved as JPEG q=90 unless said)
COPY_KINDS = ("resized", "recompressed", "cropped")


def near_copy(original: Path, kind: str, out: Path) -> None:
    """Write a near copy of `original` to `out`: half size, JPEG quality 40, or the centre 90% crop."""
    from PIL import Image

    from skutag.images import to_rgb

    image = to_rgb(Image.open(original))
    quality = 90
    if kind == "resized":
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BICUBIC)
    elif kind == "recompressed":
        quality = 40
    elif kind == "cropped":
        dx, dy = image.width // 20, image.height // 20
        image = image.crop((dx, dy, image.width - dx, image.height - dy))
    else:
        raise ValueError(kind)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    out.write_bytes(buffer.getvalue())


def plant_copies(
    root: Path, originals: list[Path], byte_copies: Sequence[Path] = (), into: str = "copies"
) -> dict[str, set[str]]:
    """Near copies of `originals` (one per COPY_KINDS) and a byte copy of each of `byte_copies`.

    Returns the planted groups: original id -> ids of the group (original included), ids relative to `root`.
    """
    folder = root / into
    folder.mkdir(parents=True, exist_ok=True)
    groups: dict[str, set[str]] = {}
    for original in originals:
        key = original.relative_to(root).as_posix()
        groups[key] = {key}
        for kind in COPY_KINDS:
            target = folder / f"{original.stem}-{kind}.jpg"
            near_copy(original, kind, target)
            groups[key].add(target.relative_to(root).as_posix())
    for source in byte_copies:
        key = source.relative_to(root).as_posix()
        target = folder / f"{source.stem}-bytes{source.suffix}"
        shutil.copyfile(source, target)
        groups[key] = {key, target.relative_to(root).as_posix()}
    return groups


def product_of(path: Path) -> str:
    """The product a photo shows: its file name before the first '-' (`wb01-black_main.jpg` -> `wb01`).

    Catalog photos of one product (colours, angles) share it; a file name without '-' is its own product."""
    return Path(path).name.split("-", 1)[0]


def grouped_folds(root: Path, k: int, seed: int) -> list[tuple[list[Path], list[Path]]]:
    """Stratified k folds that keep every product's photos in one fold (`product_of`), so no product is both
    trained on and held out: (train files, held-out files) per fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    root = Path(root).resolve()
    files = photos(root)
    labels = [f.relative_to(root).parts[0] for f in files]
    groups = [f"{label}/{product_of(f)}" for label, f in zip(labels, files, strict=True)]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [([files[i] for i in a], [files[i] for i in b]) for a, b in splitter.split(files, labels, groups)]
