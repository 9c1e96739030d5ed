"""`skutag eval`: score a run dir, a `.safetensors` or an exporter `.onnx` on labelled images.

Images go through the exact batchrun preprocessing (`load_image` with the card's
resize and crop), so fp32 / fp16 / int8 artifacts are compared on the same pixels.
The ONNX file is run through `skutag.runtime.create_session` and must carry its card;
its input is uint8 NHWC `image` (or float32 NCHW normalised when the card says so) and
its `probs` output is already softmax probabilities, calibrated inside the graph when the card has
a `temperature`; a run dir's logits are divided by the card's temperature here, so both give the same
probabilities. metrics.json has the expected calibration error of those probabilities (`ece`) and,
for a calibrated card, before temperature scaling (`ece_uncalibrated`). For a card with a `review`
section it also has what the review queue does on the eval set (`review`: rows flagged, wrong
predictions caught, per reason; trainer.review), scored on the model's embedding (a section of score
"stage-statistics": on the ONNX file's `domain_score` output, or a run dir's stage statistics through the
same taps and Gaussian, trainer.stage_stats). For a card with
attribute heads and a manifest DATA that has their columns, metrics.json has `attributes.<name>`
(trainer.head_metrics, the training run's figures): the heads' calibrated probabilities, from the
run dir's heads divided by their temperatures or the ONNX file's `attr.<name>` outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skutag.trainer.augment import Normalizer
from skutag.trainer.config import default_workers
from skutag.trainer.data import CatalogDataset, find_labelled
from skutag.trainer.display import Display
from skutag.trainer.features import split_head
from skutag.trainer.report import Evaluation, write_report
from skutag.trainer.review import review_figures
from skutag.trainer.stage_stats import DomainDistance, StageTaps, stage_root
from torch.utils.data import DataLoader

from skutag import calibration
from skutag.card import DOMAIN_SCORE, ModelCard
from skutag.errors import InputError
from skutag.fsio import atomic_write_json, check_output_dir, sha256_file
from skutag.review_stats import ood_scores

# uint8 NCHW batch -> (probabilities [N, K], embedding [N, D] or None, domain score [N] or None,
# {attribute head: probabilities})
Predict = Callable[
    [torch.Tensor], tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]
]


def evaluate(
    model_path: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    gradcam: bool | None = None,
) -> dict[str, Any]:
    """Write the report and metrics.json of `model_path` on `data` into `out`; returns the metrics."""
    from skutag.trainer.explain import check_gradcam, report_gradcam  # lazy: grad-cam is an optional extra

    check_output_dir(out)  # before the model and the images are read
    display = Display()
    model_path = Path(model_path)
    card = _card_of(model_path)
    check_gradcam(model_path, gradcam)
    # a model whose label head learned an attribute column (a manifest without `label`) reads that column
    samples = find_labelled(data, (card.provenance or {}).get("label_column", "label"))
    unknown = sorted({s.label for s in samples} - set(card.classes))
    if unknown:
        raise InputError(
            f"{data}: labels the model does not know: {unknown[:5]} (model classes: {list(card.classes)[:5]}...)"
        )
    dataset = CatalogDataset(samples, {name: i for i, name in enumerate(card.classes)}, card)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=default_workers() if workers is None else workers,
    )
    batches = iter(loader)  # workers fork here, before any ONNX Runtime session exists
    predict, where = _predictor(model_path, card, device)
    display.say(f"evaluating {model_path} on {len(samples)} images ({where})")
    evaluation, embedding, domain, attributes = _run(predict, batches, card, samples, display)
    write_report(out, evaluation)
    display.say(report_gradcam(model_path, out, gradcam))
    figures = evaluation.summary()
    if card.review is not None and card.review["score"] == DOMAIN_SCORE:  # the graph's or the taps' score
        if domain is None:
            raise InputError(
                f"{model_path}: its card's review reads the domain score, which it does not give"
            )
        figures["review"] = review_figures(card.review, evaluation.probs, domain, evaluation.labels)
    elif card.review is not None and embedding is not None:
        figures["review"] = review_figures(
            card.review,
            evaluation.probs,
            ood_scores(embedding, card.review["class_means"]),
            evaluation.labels,
        )
    if card.attributes is not None:
        figures["attributes"] = _attribute_figures(card, data, evaluation.paths, attributes, display)
    figures |= {
        "model": str(model_path),
        "model_sha256": sha256_file(model_path) if model_path.is_file() else None,
        "precision": card.precision,
        "data": str(data),
    }
    atomic_write_json(Path(out) / "metrics.json", figures)
    display.say(f"accuracy {figures['accuracy']:.4f}, macro F1 {figures['macro_f1']:.4f} -> {out}")
    display.say(_calibration_line(figures))
    if "review" in figures:
        display.say(_review_line(figures["review"]))
    return figures


def _attribute_figures(
    card: ModelCard, data: str | Path, paths: list[str], probs: dict[str, np.ndarray], display: Display
) -> dict[str, Any]:
    """metrics.json's `attributes`: each head whose column the manifest DATA has (the others are said)."""
    from skutag.trainer.attributes import AttributeSpec, HeadData, encode, read_attributes
    from skutag.trainer.head_metrics import attribute_metrics

    heads = card.attributes or ()
    if not Path(data).is_file():
        display.say("attribute heads not scored: DATA is a folder, not a manifest with their columns")
        return {}
    from skutag.manifests import read_batches

    columns = set(next(iter(read_batches(str(data)))).schema.names)
    scored = [h for h in heads if h.name in columns]
    if len(scored) < len(heads):
        display.say(
            f"attribute heads not scored (no column in DATA): {', '.join(h.name for h in heads if h not in scored)}"
        )
    table = read_attributes(data, [AttributeSpec(h.name, h.kind) for h in scored])
    encoded = {h.name: encode(HeadData(h.name, h.kind, h.values), paths, table) for h in scored}
    return attribute_metrics(scored, {h.name: probs[h.name] for h in scored}, encoded)


def _calibration_line(figures: dict[str, Any]) -> str:
    if "temperature" not in figures:
        return f"expected calibration error {figures['ece']:.4f} (the card has no temperature)"
    return (
        f"expected calibration error {figures['ece_uncalibrated']:.4f} before temperature scaling, "
        f"{figures['ece']:.4f} after (T = {figures['temperature']:.3f})"
    )


def _review_line(queue: dict[str, Any]) -> str:
    reasons = ", ".join(
        f"{name}: {r['flagged']} flagged, {r['wrong_caught']} wrong caught"
        for name, r in queue["reasons"].items()
    )
    share = queue["flagged"] / max(queue["rows"], 1)
    return (
        f"review queue: {queue['flagged']} of {queue['rows']} rows flagged ({share:.1%}), "
        f"{queue['wrong_caught']} of {queue['wrong']} wrong predictions caught ({reasons})"
    )


def _card_of(model_path: Path) -> ModelCard:
    if model_path.suffix == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(model_path), load_external_data=False)
        except Exception as exc:
            raise InputError(f"cannot read ONNX model {model_path}: {exc}") from exc
        from skutag.card import METADATA_KEY

        text = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
        if text is None:
            raise InputError(f"{model_path} has no skutag model card; export it with `skutag export`")
        return ModelCard.from_json(text)
    from skutag.trainer.weights import read_card, resolve_weights

    return read_card(resolve_weights(model_path))


def _predictor(model_path: Path, card: ModelCard, device: str) -> tuple[Predict, str]:
    if model_path.suffix == ".onnx":
        return _onnx_predictor(model_path, card, device)
    from skutag.trainer.distributed import resolve_device
    from skutag.trainer.weights import load_trained

    torch_device, line = resolve_device(device)
    model, _ = load_trained(model_path, torch_device)
    body, head = split_head(model)
    # the domain score of the review queue: the same taps and Gaussian as the exported graph's output
    taps = distance = None
    if model.domain_fit is not None and (card.review or {}).get("score") == DOMAIN_SCORE:
        taps = StageTaps(stage_root(body), tuple(card.review["stages"])).attach()
        distance = DomainDistance(model.domain_fit).to(torch_device)
    normalizer = Normalizer(card).to(torch_device)
    attribute_heads = {h.name: (h, model.heads[h.name]) for h in card.attributes or ()}

    def predict(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict]:
        from skutag.trainer.head_calibration import probabilities

        with torch.no_grad():
            x = normalizer(images.to(torch_device))
            features = body(x)
            domain = None if taps is None else distance(taps.statistics()).cpu().double().numpy()
            probs = torch.softmax(head(features).float(), dim=1).cpu().double().numpy()
            if attribute_heads:  # what the heads read: trainer.multihead.attribute_input
                inputs = model.attribute_input(features, model.attribute_extra(x))
            attributes = {
                name: probabilities(h.kind, layer(inputs).float().cpu().numpy(), h.temperature)
                for name, (h, layer) in attribute_heads.items()
            }
        if (
            card.temperature is not None
        ):  # softmax(logits / T), as the exported graph and the trainer's report
            probs = calibration.retemper(probs, 1.0 / card.temperature)
        return probs, features.float().cpu().numpy(), domain, attributes

    return predict, f"torch, {line}"


def _onnx_predictor(model_path: Path, card: ModelCard, device: str) -> tuple[Predict, str]:
    from skutag.runtime import create_session

    session, info = create_session(model_path, device)
    input_name = session.get_inputs()[0].name
    names = {o.name for o in session.get_outputs()}
    outputs = ["probs"] + (["embedding"] if "embedding" in names else [])
    outputs += ["domain_score"] if "domain_score" in names else []
    heads = [f"attr.{h.name}" for h in card.attributes or ()]  # calibrated inside the graph (exporter.heads)
    normalizer = Normalizer(card)

    def predict(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict]:
        if card.input_dtype == "uint8":
            feed = images.permute(0, 2, 3, 1).contiguous().numpy()
        else:
            feed = normalizer(images).numpy()
        got = session.run(outputs + heads, {input_name: feed})
        attributes = {
            h[len("attr.") :]: p.astype(np.float64) for h, p in zip(heads, got[len(outputs) :], strict=True)
        }
        named = dict(zip(outputs, got, strict=False))
        return got[0].astype(np.float64), named.get("embedding"), named.get("domain_score"), attributes

    return predict, f"onnxruntime {info.device}, {card.precision}"


def _run(
    predict: Predict, batches: Iterator[dict[str, Any]], card: ModelCard, samples: list, display: Display
) -> tuple[Evaluation, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    labels, probs, paths, failed, embeddings, domains = [], [], [], {}, [], []
    attributes: dict[str, list[np.ndarray]] = {}
    with display.progress("eval", len(samples)) as advance:
        for batch in batches:
            ok = batch["ok"]
            for index, error, good in zip(batch["index"].tolist(), batch["error"], ok.tolist(), strict=True):
                if not good:
                    failed[samples[index].path] = error
            if ok.any():
                scores, embedding, domain, heads = predict(batch["image"][ok])
                domains.append(domain)
                for name, head_probs in heads.items():
                    attributes.setdefault(name, []).append(head_probs)
                probs.append(scores)
                embeddings.append(embedding)
                labels.append(batch["label"][ok].numpy())
                paths += [samples[i].path for i in batch["index"][ok].tolist()]
            advance(len(ok))
    if not probs:
        first = next(iter(failed.values()), "")
        raise InputError(f"none of the {len(samples)} images could be loaded (first error: {first})")
    evaluation = Evaluation(
        list(card.classes), paths, np.concatenate(labels), np.concatenate(probs), failed, card.temperature
    )
    embedding = None if any(e is None for e in embeddings) else np.concatenate(embeddings)
    domain = None if any(d is None for d in domains) else np.concatenate(domains)
    return evaluation, embedding, domain, {name: np.concatenate(parts) for name, parts in attributes.items()}
