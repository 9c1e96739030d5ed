"""Synthetic product catalog: deterministic, learnable, downloaded from nowhere.

Each image is a studio-style product photo: a plain light background with a soft
gradient, one object whose shape, colour and surface texture depend on its class,
random placement, scale, rotation and lighting, and sensor noise. Sizes are those of
catalog photos (600-1200 px by default); most files are JPEG, some PNG cut-outs with a
transparent background. Image i of seed s is the same bytes on every machine, and
class membership is i % classes, so any prefix of the catalog is balanced.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross", "hexagon", "bar")
COLOURS = {
    "red": (200, 30, 35),
    "green": (40, 150, 60),
    "blue": (35, 70, 190),
    "yellow": (230, 190, 30),
    "purple": (120, 50, 150),
    "orange": (235, 120, 25),
    "teal": (20, 140, 140),
    "black": (30, 30, 35),
}
TEXTURES = ("plain", "striped", "dotted", "checked")


@dataclass(frozen=True)
class SynthSpec:
    count: int = 200
    classes: int = 10
    min_size: int = 600
    max_size: int = 1200
    png_fraction: float = 0.15
    val_fraction: float = 0.0
    seed: int = 0
    aspects: tuple[float, ...] = (1.0, 4 / 3, 3 / 2, 3 / 4, 2 / 3)  # width / height


@dataclass(frozen=True)
class SynthSummary:
    images: int
    classes: list[str]
    root: str


@dataclass(frozen=True)
class ClassStyle:
    shape: str
    colour: str
    texture: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}_{self.texture}"


def class_styles(count: int) -> list[ClassStyle]:
    """`count` distinct (shape, colour, texture) styles; the first 8 differ in shape and colour."""
    colours = list(COLOURS)
    styles = []
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)]
        colour = colours[(i + 3 * (i // len(SHAPES))) % len(colours)]
        texture = TEXTURES[(i // len(SHAPES)) % len(TEXTURES)]
        styles.append(ClassStyle(shape, colour, texture))
    return styles


def make_catalog(out: str | os.PathLike, spec: SynthSpec, *, progress: bool = False) -> SynthSummary:
    """Write the catalog under `out` (ImageFolder layout; `train/` and `val/` when spec.val_fraction > 0)."""
    root = Path(out)
    styles = class_styles(spec.classes)
    jobs = [(spec, i) for i in range(spec.count)]
    written = 0
    with _progress(progress, spec.count) as advance:
        for relative_path, data in _render_all(jobs):
            path = root / relative_path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written += 1
            advance()
    (root / "synth.json").write_text(
        json.dumps({"spec": asdict(spec), "classes": [s.name for s in styles]}, indent=2)
    )
    return SynthSummary(images=written, classes=sorted(s.name for s in styles), root=str(root))


def _render_all(jobs: list[tuple[SynthSpec, int]]) -> Iterator[tuple[str, bytes]]:
    if len(jobs) < 64 or (os.cpu_count() or 1) < 2:
        yield from map(_render_job, jobs)
        return
    with ProcessPoolExecutor(max_workers=min(os.cpu_count() or 1, 8)) as pool:
        yield from pool.map(_render_job, jobs, chunksize=16)


def _render_job(job: tuple[SynthSpec, int]) -> tuple[str, bytes]:
    spec, index = job
    return render_file(spec, index)


def render_file(spec: SynthSpec, index: int) -> tuple[str, bytes]:
    """The relative path and file bytes of image `index` of the catalog `spec`."""
    rng = np.random.default_rng([spec.seed, index])
    style = class_styles(spec.classes)[index % spec.classes]
    as_png = rng.random() < spec.png_fraction
    image = render_image(style, rng, spec.min_size, spec.max_size, transparent=as_png, aspects=spec.aspects)
    buffer = io.BytesIO()
    if as_png:
        image.save(buffer, format="PNG", compress_level=1)
        suffix = ".png"
    else:
        image.save(buffer, format="JPEG", quality=int(rng.integers(80, 96)))
        suffix = ".jpg"
    name = f"{style.name}_{index:06d}{suffix}"
    split = ""
    if spec.val_fraction > 0:
        # Image j of a class goes to val when j * fraction crosses an integer: stratified, deterministic.
        j = index // spec.classes
        split = (
            "val/"
            if math.floor((j + 1) * spec.val_fraction) > math.floor(j * spec.val_fraction)
            else "train/"
        )
    return f"{split}{style.name}/{name}", buffer.getvalue()


def render_image(
    style: ClassStyle,
    rng: np.random.Generator,
    min_size: int,
    max_size: int,
    *,
    transparent: bool = False,
    aspects: tuple[float, ...] = SynthSpec.aspects,
) -> Image.Image:
    long_side = int(rng.integers(min_size, max_size + 1))
    aspect = float(rng.choice(aspects))
    width, height = (
        (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    )

    mask = _shape_mask(style.shape, width, height, rng)
    if transparent:
        surface = _surface(style, (0, 0, width, height), rng)
        alpha = mask.filter(ImageFilter.GaussianBlur(1.2))
        image = Image.fromarray(surface.astype(np.uint8), "RGB")
        image.putalpha(alpha)
        return image
    # Only the object's box (and its shadow) needs per-pixel compositing.
    shadow = _shadow(mask, rng)
    left, top, right, bottom = _union_box(mask.getbbox(), shadow.getbbox(), pad=4, size=(width, height))
    box = (left, top, right, bottom)
    canvas = _background(width, height, rng)
    alpha = (
        np.asarray(mask.crop(box).filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)[..., None] / 255.0
    )
    shade = np.asarray(shadow.crop(box), dtype=np.float32)[..., None] / 255.0
    surface = _surface(style, box, rng)
    region = canvas[top:bottom, left:right]
    canvas[top:bottom, left:right] = region * (1 - 0.35 * shade) * (1 - alpha) + surface * alpha
    canvas += rng.standard_normal((height, width, 3), dtype=np.float32) * float(rng.uniform(2.0, 7.0))
    return Image.fromarray(np.clip(canvas, 0, 255, out=canvas).astype(np.uint8), "RGB")


def _union_box(a, b, *, pad: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    boxes = [box for box in (a, b) if box]
    if not boxes:
        return (0, 0, 1, 1)
    return (
        max(0, min(x[0] for x in boxes) - pad),
        max(0, min(x[1] for x in boxes) - pad),
        min(size[0], max(x[2] for x in boxes) + pad),
        min(size[1], max(x[3] for x in boxes) + pad),
    )


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(215, 250)
    tint = rng.uniform(-8, 8, size=3).astype(np.float32)
    ramp = np.linspace(rng.uniform(-18, 0), rng.uniform(0, 10), height, dtype=np.float32)[:, None, None]
    return np.broadcast_to(np.float32(base) + tint + ramp, (height, width, 3)).copy()


def _shadow(mask: Image.Image, rng: np.random.Generator) -> Image.Image:
    dx, dy = (int(v) for v in rng.integers(5, 25, size=2))
    shifted = Image.new("L", mask.size)
    shifted.paste(mask, (dx, dy))
    return shifted.filter(ImageFilter.BoxBlur(max(4, mask.size[0] // 60)))


def _surface(style: ClassStyle, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """The object's coloured, textured, shaded surface over `box` (float32 [h, w, 3])."""
    left, top, right, bottom = box
    colour = np.array(COLOURS[style.colour], dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(
        -12, 12, 3
    )
    light = np.clip(colour * 0.45 + 150, 0, 255)
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = (bottom - top + right - left) / 2 / rng.uniform(6, 10)
    u = (xx * math.cos(angle) + yy * math.sin(angle)) / period
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) / period
    if style.texture == "striped":
        pattern = np.floor(u) % 2 == 0
    elif style.texture == "dotted":
        pattern = ((u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2) > 0.09
    elif style.texture == "checked":
        pattern = (np.floor(u) + np.floor(v)) % 2 == 0
    else:
        pattern = np.ones(yy.shape, dtype=bool)
    shading = 1.0 + 0.12 * ((yy - top) / max(1, bottom - top) - 0.5) * rng.choice([-1, 1])
    surface = np.where(pattern[..., None], colour, light) * shading[..., None]
    return np.clip(surface, 0, 255).astype(np.float32)


def _shape_mask(shape: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    short = min(width, height)
    radius = short * rng.uniform(0.22, 0.36)
    cx = width / 2 + rng.uniform(-0.08, 0.08) * width
    cy = height / 2 + rng.uniform(-0.08, 0.08) * height
    turn = rng.uniform(0, 2 * math.pi)

    def polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(turn), math.sin(turn)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    def regular(sides: int, r: float, phase: float = 0.0) -> list[tuple[float, float]]:
        return [
            (r * math.cos(phase + 2 * math.pi * k / sides), r * math.sin(phase + 2 * math.pi * k / sides))
            for k in range(sides)
        ]

    if shape == "disc":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        inner = radius * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif shape == "square":
        draw.polygon(polygon(regular(4, radius * 1.1, math.pi / 4)), fill=255)
    elif shape == "triangle":
        draw.polygon(polygon(regular(3, radius * 1.2)), fill=255)
    elif shape == "hexagon":
        draw.polygon(polygon(regular(6, radius)), fill=255)
    elif shape == "star":
        outer, inner = regular(5, radius * 1.15), regular(5, radius * 0.5, math.pi / 5)
        draw.polygon(polygon([p for pair in zip(outer, inner, strict=True) for p in pair]), fill=255)
    elif shape == "cross":
        a, b = radius, radius * 0.35
        draw.polygon(
            polygon(
                [
                    (-a, -b),
                    (-b, -b),
                    (-b, -a),
                    (b, -a),
                    (b, -b),
                    (a, -b),
                    (a, b),
                    (b, b),
                    (b, a),
                    (-b, a),
                    (-b, b),
                    (-a, b),
                ]
            ),
            fill=255,
        )
    elif shape == "bar":
        a, b = radius * 1.3, radius * 0.4
        draw.polygon(polygon([(-a, -b), (a, -b), (a, b), (-a, b)]), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


class _progress:
    """A rich progress bar when asked for, else nothing. Yields an `advance()` callable."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import Progress

        # On stderr, and only on a terminal: elsewhere a transient bar leaves an empty line behind.
        console = Console(stderr=True)
        if not console.is_terminal:
            self.enabled = False
            return lambda: None
        self._progress = Progress(console=console, transient=True)
        self._progress.__enter__()
        task = self._progress.add_task("rendering catalog", total=self.total)
        return lambda: self._progress.advance(task)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)
