"""hyperIQA: the `koniq_pretrained.pkl` layout, strict loading, the target network and upstream's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsync.errors import CheckpointError
from latentsync.models.hyperiqa import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HyperIQA,
    center_crop,
    load_hyperiqa,
    quality_frame_indices,
    quality_score,
)

# SSL92/hyperIQA models.py, HyperNet(16, 112, 224, 112, 56, 28, 14, 7), written out: (module, weight shape, bias).
LDA = [
    ("res.lda1_pool.0", [16, 256, 1, 1], False), ("res.lda1_fc", [16, 1024], True),
    ("res.lda2_pool.0", [32, 512, 1, 1], False), ("res.lda2_fc", [16, 512], True),
    ("res.lda3_pool.0", [64, 1024, 1, 1], False), ("res.lda3_fc", [16, 256], True),
    ("res.lda4_fc", [176, 2048], True),
]
HEAD = [
    ("conv1.0", [1024, 2048, 1, 1]), ("conv1.2", [512, 1024, 1, 1]), ("conv1.4", [112, 512, 1, 1]),
    ("fc1w_conv", [512, 112, 3, 3]), ("fc1b_fc", [112, 112]),
    ("fc2w_conv", [128, 112, 3, 3]), ("fc2b_fc", [56, 112]),
    ("fc3w_conv", [32, 112, 3, 3]), ("fc3b_fc", [28, 112]),
    ("fc4w_conv", [8, 112, 3, 3]), ("fc4b_fc", [14, 112]),
    ("fc5w_fc", [14, 112]), ("fc5b_fc", [1, 112]),
]
RESNET50_STAGES = [(64, 3), (128, 4), (256, 6), (512, 3)]  # (planes, blocks): torchvision's resnet50
RESNET50_PARAMS_WITHOUT_FC = 25_557_032 - (2048 * 1000 + 1000)


def _bn(prefix: str, n: int) -> dict[str, list[int]]:
    return {f"{prefix}.{s}": [n] for s in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": []
    }


def _expected_state() -> dict[str, list[int]]:
    out = {"res.conv1.weight": [64, 3, 7, 7], **_bn("res.bn1", 64)}
    inplanes = 64
    for stage, (planes, blocks) in enumerate(RESNET50_STAGES, 1):
        for b in range(blocks):
            p = f"res.layer{stage}.{b}"
            cin = inplanes if b == 0 else planes * 4
            out[f"{p}.conv1.weight"] = [planes, cin, 1, 1]
            out.update(_bn(f"{p}.bn1", planes))
            out[f"{p}.conv2.weight"] = [planes, planes, 3, 3]
            out.update(_bn(f"{p}.bn2", planes))
            out[f"{p}.conv3.weight"] = [planes * 4, planes, 1, 1]
            out.update(_bn(f"{p}.bn3", planes * 4))
            if b == 0:
                out[f"{p}.downsample.0.weight"] = [planes * 4, inplanes, 1, 1]
                out.update(_bn(f"{p}.downsample.1", planes * 4))
        inplanes = planes * 4
    for name, shape, bias in LDA:
        out[f"{name}.weight"] = shape
        if bias:
            out[f"{name}.bias"] = shape[:1]
    for name, shape in HEAD:
        out[f"{name}.weight"], out[f"{name}.bias"] = shape, shape[:1]
    return out


@pytest.fixture(scope="module")
def model() -> HyperIQA:
    torch.manual_seed(0)
    net = HyperIQA()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(3)]


def test_layout_matches_koniq_pretrained():
    with torch.device("meta"):
        net = HyperIQA()
    state = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert state == _expected_state()
    assert list(state) == list(_expected_state())  # registration order: backbone, lda, then the hyper head
    backbone = sum(p.numel() for n, p in net.named_parameters() if n.startswith("res.") and ".lda" not in n)
    assert backbone == RESNET50_PARAMS_WITHOUT_FC


def test_target_net_matches_the_original_grouped_conv(model: HyperIQA):
    """The original evaluates the per-image layers as one grouped 1x1 conv over the batch; same numbers."""
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        params = model.target_params(images)
        score = model(images)
        q = params.in_vec.reshape(1, -1, 1, 1)  # [1, B * 224, 1, 1]
        for i, (w, b) in enumerate(zip(params.weights, params.biases)):
            q = F.conv2d(q, w.reshape(-1, w.shape[2], 1, 1), b.reshape(-1), groups=2)
            q = torch.sigmoid(q) if i < 4 else q
    assert [w.shape[1:] for w in params.weights] == [(112, 224), (56, 112), (28, 56), (14, 28), (1, 14)]
    assert score.shape == (2,) and torch.isfinite(score).all()
    torch.testing.assert_close(score, q.reshape(-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score[0], score[1])  # each image gets its own target network


def test_quality_score_is_mean_of_centre_crops(model: HyperIQA, frames: list[np.ndarray]):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        expected = model((x[:, :, 16:240, 16:240] - mean) / std).mean()
    assert quality_score(model, frames) == pytest.approx(float(expected), rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError):
        quality_score(model, [])


def test_center_crop_follows_torchvision():
    def crop_origin(h: int, w: int) -> tuple[int, int]:
        image = torch.arange(h * w).reshape(1, h, w)
        c = center_crop(image)
        assert c.shape == (1, 224, 224)
        return divmod(int(c[0, 0, 0]), w)

    assert crop_origin(256, 512) == (16, 144)
    assert crop_origin(225, 226) == (0, 1)  # round(0.5) = 0, round(1.0) = 1: Python rounding, as torchvision
    assert crop_origin(227, 224) == (2, 0)  # round(1.5) = 2
    small = center_crop(torch.full((3, 200, 221), 9, dtype=torch.uint8))  # zero-padded, extra pixel after
    assert small.shape == (3, 224, 224)
    assert small[:, 12:212, 1:222].eq(9).all() and small.sum() == 9 * 3 * 200 * 221


def test_quality_frame_indices():
    assert quality_frame_indices(125) == (0, 62, 124)
    assert quality_frame_indices(1) == (0, 0, 0)
    with pytest.raises(ValueError):
        quality_frame_indices(0)


def test_original_format_loads_strictly_and_rejects_a_wrong_key(model: HyperIQA, tmp_path):
    path = tmp_path / "koniq_pretrained.pkl"
    torch.save(model.state_dict(), path)  # the published format: a bare state dict
    loaded = load_hyperiqa(path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # BatchNorm counters are optional (torch's own loader fills them in for old files); nothing else is.
    torch.save({k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}, path)
    assert torch.equal(load_hyperiqa(path).state_dict()["res.bn1.running_var"], model.res.bn1.running_var)

    state = dict(model.state_dict())
    state["res.fc.weight"] = torch.zeros(1000, 2048)  # a torchvision resnet's classifier does not belong
    state["fc5b_fc.weights"] = state.pop("fc5b_fc.weight")
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_hyperiqa(path)
    assert "\n" not in str(err.value) and "fc5b_fc.weight" in str(err.value) and "res.fc.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_hyperiqa(tmp_path / "missing.pkl")
