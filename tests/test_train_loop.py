"""The shared training helpers: config loading, the optimizer step, the metrics CSV and curves."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from latentsync.errors import ConfigError, DeviceError
from latentsync.train.loop import (
    MetricsLog, RunConfig, Stepper, curve_panels, load_config, parse_overrides, plot_curves,
)


@dataclass
class _Section:
    lr: float = 1e-5
    name: str | None = None
    flag: bool = False


@dataclass
class _Config:
    model: object = "preset"
    opt: _Section = field(default_factory=_Section)
    run: RunConfig = field(default_factory=RunConfig)


def test_load_config_types_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("opt:\n  lr: 1e-4\nrun:\n  max_steps: 7\nmodel: {audio_encoder: {}}\n")
    cfg = load_config(_Config, path, parse_overrides(["run.seed=3", "opt.flag=true", "opt.name=x=y"]))
    assert cfg.opt.lr == 1e-4 and isinstance(cfg.opt.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.run.max_steps == 7 and cfg.run.seed == 3 and cfg.run.grad_clip == 1.0
    assert cfg.opt.flag is True and cfg.opt.name == "x=y" and cfg.model == {"audio_encoder": {}}

    for text, message in [
        ("opt:\n  lrr: 1\n", "unknown config key opt.lrr"),
        ("run:\n  max_steps: 1.5\n", "run.max_steps must be int"),
        ("run:\n  max_steps: true\n", "run.max_steps must be int"),
        ("opt:\n  flag: 1\n", "opt.flag must be bool"),
        ("opt:\n  lr: null\n", "opt.lr must not be null"),
        ("run: 3\n", "section run must be a mapping"),
        ("- 1\n", "not a mapping"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(_Config, path)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["run.seed"])


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def test_stepper_accumulates_micro_batches_and_clips() -> None:
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.ones(8, 1)
    results = []
    for accum in (1, 2, 4):
        model = _linear()
        stepper = Stepper(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), "no", accum, 0.5)
        for xs, ys in zip(x.chunk(accum), y.chunk(accum)):
            stepper.backward(nn.functional.mse_loss(model(xs), ys))
        norm = stepper.step()
        results.append((norm, model.weight.detach().clone()))
        assert all(p.grad is None for p in model.parameters())  # zeroed for the next step
    for norm, weight in results[1:]:
        assert norm == pytest.approx(results[0][0], rel=1e-5)
        torch.testing.assert_close(weight, results[0][1])
    start = _linear().weight.detach()
    assert results[0][0] > 0.5  # so the update was clipped to norm 0.5 (times lr 0.1), bias included
    assert (results[0][1] - start).norm() <= 0.1 * 0.5 + 1e-6


def test_stepper_checks_precision_and_call_order() -> None:
    model = _linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DeviceError, match="fp16 needs CUDA"):
        Stepper(model, optimizer, torch.device("cpu"), "fp16")
    with pytest.raises(ConfigError, match="mixed_precision"):
        Stepper(model, optimizer, torch.device("cpu"), "fp8")
    stepper = Stepper(model, optimizer, torch.device("cpu"), "bf16", grad_accum=2)
    with stepper.autocast():
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    stepper.backward(out.float().sum())
    with pytest.raises(RuntimeError, match="after 1 of 2"):
        stepper.step()


def test_metrics_log_resume_drops_later_rows_and_plots(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path, ["loss", "val_loss"])
    for step in (1, 2, 3):
        log.log(step, loss=1.0 / step)
    log.log(3, val_loss=0.5)
    with pytest.raises(ValueError, match="not columns"):
        log.log(4, acc=1.0)
    resumed = MetricsLog(path, ["loss", "val_loss"], resume_step=2)  # steps after 2 are trained again
    resumed.log(3, loss=0.25)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"], r["val_loss"]) for r in rows] == [("1", "1", ""), ("2", "0.5", ""), ("3", "0.25", "")]
    assert float(rows[2]["time"]) >= float(rows[1]["time"])
    MetricsLog(path, ["loss"])  # a fresh run (no resume step) starts a new file
    assert path.read_text().splitlines() == ["step,time,loss"]

    log = MetricsLog(path, ["loss", "val_loss"])
    log.log(1, loss=0.7)
    log.log(2, loss=0.6, val_loss=0.65)
    png = plot_curves(path, tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    series = {"mse": [(1, 0.5)], "mse_sync": [(1, 0.1)], "sync": [(1, 0.0)], "val_mse": [(1, 0.4)],
              "val_mse_no_audio": [(1, 0.45)], "val_mse_sync": [(1, 0.2)], "val_acc": [(1, 0.7)]}
    assert curve_panels(series) == {"mse": ["mse", "val_mse", "val_mse_no_audio"], "mse_sync": ["mse_sync", "val_mse_sync"],
                                    "acc": ["val_acc"]}  # an all-zero loss gets no panel


def test_lr_schedule_is_a_function_of_the_step() -> None:
    """Constant by default (upstream); cosine from lr to lr * final_lr; since it depends on the step alone, a run
    resumed with a longer max_steps or another schedule follows the new config, not the checkpoint's lr."""
    from latentsync.train.loop import OptimizerConfig
    from latentsync.train.schedule import set_lr

    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    assert set_lr(optimizer, OptimizerConfig(lr=3e-4), 500, 1000) == 3e-4
    cosine = OptimizerConfig(lr=1e-3, schedule="cosine", final_lr=0.1)
    assert set_lr(optimizer, cosine, 0, 1000) == pytest.approx(1e-3)
    assert set_lr(optimizer, cosine, 500, 1000) == pytest.approx(0.55e-3)
    assert set_lr(optimizer, cosine, 1000, 1000) == pytest.approx(1e-4)
    assert set_lr(optimizer, cosine, 1500, 1000) == pytest.approx(1e-4)  # past the end: stays at the floor
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="optimizer.schedule must be constant or cosine"):
        set_lr(optimizer, OptimizerConfig(schedule="linear"), 0, 10)
