"""The domain score's building blocks (issue 29): stage statistics by forward hooks, the low-rank
Gaussian fitted on training rows, and a domain shift the pooled final features miss but the statistics
catch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf
from skutag.trainer.review import class_means, domain_fit
from skutag.trainer.stage_stats import DomainDistance, StageTaps, stage_names, statistics
from torch import nn

from skutag.review_stats import domain_scores, ood_scores


class Toy(nn.Module):
    """A linear 3x3 convolution ("valid") and the global average pool: the pooled features of an image
    plus a zero-mean checkerboard are exactly those of the image (30 x 30 outputs, even)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).mean(dim=(2, 3))


def photos(n: int, seed: int, shifted: bool) -> tuple[torch.Tensor, np.ndarray]:
    """n smooth 32x32 images of two classes (a colour each, random brightness and gradients); `shifted`
    adds a +-0.5 checkerboard: another domain's texture, zero mean."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    colour = torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.2, 0.8]])[labels]
    ramp = torch.linspace(-1, 1, 32)[None, :].expand(32, 32)
    slope = torch.rand(n, 1, 1, 1, generator=g) * 0.3
    images = colour[:, :, None, None] * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)) + slope * ramp
    if shifted:
        idx = torch.arange(32)
        images = images + 0.5 * (((idx[:, None] + idx[None, :]) % 2) * 2 - 1).float()
    return images, labels.numpy()


def test_a_domain_shift_the_pooled_features_miss_is_caught_by_the_stage_statistics() -> None:
    model = Toy().eval()
    runs = {}
    with torch.no_grad(), StageTaps(model, ("stem",)) as taps:
        for name, (images, labels) in {
            "train": photos(200, 1, False),
            "val": photos(100, 2, False),
            "ood": photos(100, 2, True),
        }.items():
            runs[name] = (model(images).numpy(), taps.statistics().numpy(), labels)
    # The same photos with the checkerboard: identical pooled features, so the cosine cannot tell.
    np.testing.assert_allclose(runs["ood"][0], runs["val"][0], atol=1e-5)
    means = class_means(runs["train"][0], runs["train"][2], 2)
    cosine = {k: ood_scores(f, means) for k, (f, _, _) in runs.items()}
    fit = domain_fit(runs["train"][1])
    domain = {k: domain_scores(s, fit) for k, (_, s, _) in runs.items()}
    cosine_flagged = np.mean(cosine["ood"] > np.quantile(cosine["val"], 0.95))
    domain_flagged = np.mean(domain["ood"] > np.quantile(domain["val"], 0.95))
    assert cosine_flagged <= 0.10
    assert domain_flagged == 1.0
    assert np.mean(domain["val"] > np.quantile(domain["train"], 0.99)) <= 0.1  # the held-out domain is in


def test_the_low_rank_distance_at_full_rank_is_the_ledoit_wolf_mahalanobis_distance() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 12)) @ rng.normal(size=(12, 12))
    rows = rng.normal(size=(5, 12)) * 3
    fit = domain_fit(train, rank=11)
    lw = LedoitWolf().fit(train - train.mean(axis=0))
    d = rows - train.mean(axis=0)
    np.testing.assert_allclose(
        domain_scores(rows, fit), np.einsum("nd,de,ne->n", d, lw.precision_, d), rtol=1e-8
    )
    small = domain_fit(train, rank=3)
    assert small["basis"].shape == (12, 3) and small["weights"].shape == (3,)
    assert np.all(domain_scores(rows, small) > 0)
    with pytest.raises(ValueError):
        domain_fit(train[:1])


def test_stage_layouts_efficientnet_resnet_and_none() -> None:
    efficientnet = nn.Module()
    efficientnet.bn1, efficientnet.blocks = nn.BatchNorm2d(4), nn.Sequential(nn.Identity(), nn.Identity())
    assert stage_names(efficientnet) == ("bn1", "blocks.0", "blocks.1")
    resnet = nn.Module()
    for i in range(1, 5):
        setattr(resnet, f"layer{i}", nn.Identity())
    assert stage_names(resnet) == ("layer1", "layer2", "layer3", "layer4")
    assert stage_names(nn.Sequential(nn.Conv2d(3, 4, 3))) == ()
    with pytest.raises(ValueError):
        StageTaps(resnet, ())


@pytest.mark.slow  # timm's import and a Lite0 on 2 loaded cores: ~20 s
def test_lite0_stages_and_statistics_match_a_manual_computation() -> None:
    import timm

    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    names = stage_names(lite)
    assert names == ("bn1", *(f"blocks.{i}" for i in range(7)))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), StageTaps(lite, names) as taps:
        lite(x)
        stats = taps.statistics()
        first = lite.bn1(lite.conv_stem(x))
    channels = 32 + 16 + 24 + 40 + 80 + 112 + 192 + 320
    assert stats.shape == (2, 2 * channels)
    np.testing.assert_allclose(stats[:, :32], first.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[:, 32:64], torch.log(first.std(dim=(2, 3)) + 1e-6), rtol=1e-5, atol=1e-5)
    assert torch.equal(statistics([first]), stats[:, :64])
    with pytest.raises(RuntimeError):
        taps.statistics()  # the outputs were consumed, and the hooks are gone
    assert not lite.bn1._forward_hooks


class Tiny(nn.Module):
    """The timm EfficientNet layout in miniature (`bn1`, `blocks`), with a domain score beside the pooled
    features: the taps trace into the exported graph."""

    def __init__(self, fit: dict | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(4)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU()), nn.Conv2d(6, 8, 3, stride=2)
        )
        self.taps = StageTaps(self, stage_names(self)).attach()
        self.distance = None if fit is None else DomainDistance(fit)

    def forward(self, image: torch.Tensor):
        pooled = self.blocks(self.bn1(self.conv(image))).mean(dim=(2, 3))
        stats = self.taps.statistics()
        return (pooled, stats) if self.distance is None else (pooled, self.distance(stats))


@pytest.mark.slow  # the dynamo ONNX export: ~10 s on 2 loaded cores
def test_the_domain_score_exports_into_the_onnx_graph_and_matches_numpy() -> None:
    import onnxruntime as ort

    images = torch.rand(40, 3, 32, 32)
    with torch.no_grad():
        _, stats = Tiny().eval()(images)
    fit = domain_fit(stats[:32].double().numpy(), rank=4)
    model = Tiny(fit).eval()
    with torch.no_grad():
        _, torch_score = model(images[32:])
    np.testing.assert_allclose(torch_score.numpy(), domain_scores(stats[32:].numpy(), fit), rtol=1e-4)
    program = torch.onnx.export(
        model,
        (images[:2],),
        None,
        dynamo=True,
        opset_version=18,
        input_names=["image"],
        output_names=["embedding", "domain_score"],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    _, onnx_score = session.run(None, {"image": images[32:].numpy()})
    # An int8 export keeps the tail from the outputs back to the first pooling op in float: the domain
    # score's statistics stop there too (a ReduceMean on every path), so no convolution is in it.
    from skutag.exporter.quantize import tail_nodes

    tail = {node.op_type for node in tail_nodes(program.model_proto)}
    assert "ReduceMean" in tail and "Conv" not in tail, tail
    assert onnx_score.shape == (8,)
    np.testing.assert_allclose(onnx_score, domain_scores(stats[32:].numpy(), fit), rtol=1e-4)
