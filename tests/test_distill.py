"""`latentsync train distill`: the straight-line targets, and a student of the bundled demo model that beats the
teacher's own few-step sampling against the teacher's full result, as a model folder the pipeline runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from media.clips import write_clip
from media.faces import astronaut_frames
from media.speech import speech, write_audio

from latentsync.app.ui import _model_settings
from latentsync.data.synth import synthesize
from latentsync.errors import ConfigError, ModelNotFoundError
from latentsync.models.checkpoint import read_checkpoint
from latentsync.models.modeldir import ModelDir
from latentsync.models.scheduler import make_scheduler
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions
from latentsync.train.distill import train_distill
from latentsync.train.distill_targets import Sampling, on_the_line, sample, student_timesteps, x0_loss
from latentsync.train.loop import read_metrics


class LineOracle(torch.nn.Module):
    """A U-Net stand-in that predicts the eps of the line from `noise` to `x0` exactly (the perfect student)."""

    def __init__(self, noise: torch.Tensor, x0: torch.Tensor) -> None:
        super().__init__()
        self.noise, self.x0 = noise, x0
        self.alphas = make_scheduler().alphas_cumprod

    def forward(self, sample_in: torch.Tensor, t: torch.Tensor, audio: torch.Tensor, cache=None) -> torch.Tensor:
        _, eps = on_the_line(self.alphas, 999, torch.as_tensor(t).reshape(1), self.noise.expand_as(self.x0), self.x0)
        return eps


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_a_student_that_predicts_the_line_lands_on_the_teachers_result(steps: int) -> None:
    """The targets' geometry: from the line's start, DDIM on the student's trailing timesteps with the line's eps
    ends at x0 (up to DDIM's last step stopping at alpha 0.99915), and the loss of that prediction is zero."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 3, 8, 8, generator=gen).clamp(-2, 2)
    noise = torch.randn(1, 4, 1, 8, 8, generator=gen)
    target = {"masked": torch.zeros_like(x0), "ref": torch.zeros_like(x0), "audio": torch.zeros(1, 3, 50, 8),
              "noise": noise}
    result = sample(LineOracle(noise, x0), Sampling("ddim-trailing", steps, 1.0), target, torch.ones(1, 1, 1, 8, 8))
    assert (result - x0).abs().mean() < 0.05
    assert student_timesteps(steps)[0] == 999 and len(student_timesteps(steps)) == steps

    alphas = make_scheduler().alphas_cumprod
    t = student_timesteps(steps)[-1:]
    x_t, eps = on_the_line(alphas, 999, t, noise.expand_as(x0), x0)
    assert x0_loss(alphas, t, x_t, eps, x0) < 1e-8
    assert x0_loss(alphas, t, x_t, eps + 0.1, x0) > 1e-3


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> dict:
    """The demo model distilled into a 2-step student for 24 steps on 4 teacher results (4-frame windows of the
    synthetic talking faces it was trained on), then resumed to 30 steps."""
    d = tmp_path_factory.mktemp("distill")
    synthesize(d / "synth", 2, seconds=(2.4, 2.4), resolution=128, size=(320, 180), seed=11)
    config = {
        "teacher": {"model": "demo", "steps": 10},
        "steps": 2,
        "data": {"root": str(d / "synth" / "aligned"), "val_filelist": "filelist.txt", "num_frames": 4,
                 "targets": 4, "val_targets": 2, "batch_size": 2, "num_workers": 0, "samples_per_epoch": 8},
        "optimizer": {"lr": 1e-4, "weight_decay": 0.0},
        "run": {"max_steps": 24, "val_every": 24, "ckpt_every": 12, "log_every": 4, "device": "cpu",
                "output_dir": str(d / "run")},
        "ckpt": {"resume_from": "latest"},
    }
    path = d / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    train_distill(path)
    targets = sorted((d / "run" / "targets" / "train").iterdir())
    stamps = [p.stat().st_mtime_ns for p in targets]
    final = train_distill(path, {"run.max_steps": 30, "run.val_every": 6})
    return {"dir": d, "run": d / "run", "final": final, "targets": targets, "stamps": stamps}


def test_the_student_beats_the_teachers_few_step_sampling(distilled: dict) -> None:
    metrics = read_metrics(distilled["run"] / "metrics.csv")
    (_, teacher_mse), = metrics["teacher_mse"]
    (_, teacher_psnr), = metrics["teacher_psnr"]
    step, student_mse = metrics["val_mse"][-1]
    assert step == 30 and [s for s, _ in metrics["val_mse"]] == [24, 30]
    assert student_mse < 0.8 * teacher_mse, (student_mse, teacher_mse)
    assert metrics["val_psnr"][-1][1] > teacher_psnr + 0.5
    # resumed, not restarted: the log continues and the teacher's results were not made again
    assert [s for s, _ in metrics["loss"]] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [p.stat().st_mtime_ns for p in distilled["targets"]] == distilled["stamps"]
    assert read_checkpoint(distilled["final"]).global_step == 30


def test_the_student_is_a_model_folder_that_samples_its_own_way(distilled: dict, tmp_path: Path) -> None:
    model = ModelDir.resolve(distilled["run"] / "model")
    assert model.spec.inference["sampler"] == "ddim-trailing"
    assert (model.spec.inference["steps"], model.spec.inference["guidance_scale"]) == (2, 1.0)
    assert model.spec.inference["paste"] == "seamless"  # the teacher's other settings carry over
    assert read_checkpoint(model.spec.unet_weights).global_step == 30
    wav = speech("One two.", rate=16000)[:16000]
    video = write_clip(tmp_path / "face.mp4", astronaut_frames(25, size=(320, 240), fps=25), fps=25)
    report = LipSyncPipeline.from_model(str(model.spec.root), "cpu", "fp32").run(
        video, write_audio(tmp_path / "speech.wav", wav, 16000), tmp_path / "out.mp4", RunOptions())
    assert report.sampling.startswith("ddim-trailing, 2 steps, guidance 1,"), report.sampling
    assert (tmp_path / "out.mp4").is_file()
    # the app's settings follow the picked model: a student must not start at 20 guided steps
    assert _model_settings(str(model.spec.root)) == (1.0, 2, "ddim-trailing")
    assert _model_settings(str(tmp_path / "no-such-model")) == (1.5, 20, "ddim")


@pytest.mark.parametrize("overrides, message", [
    ({"steps": 5}, "steps .* must be 1 to 4"),
    ({"steps": 2, "teacher.steps": 2}, "must be more than the student's"),
    ({"data.targets": 0}, "data.targets must be at least 1"),
])
def test_bad_settings_are_refused_before_any_work(overrides: dict, message: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(tmp_path)}, "run": {"output_dir": str(tmp_path / "run")}}))
    with pytest.raises(ConfigError, match=message):
        train_distill(config, overrides)
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        train_distill(config, {"teacher.model": str(tmp_path / "nowhere")})
    assert not (tmp_path / "run").exists()
