"""SyncNet training: it learns sync on held-out synthetic clips, resumes exactly, and runs under DDP (gloo, CPU)."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from media.talking import talking_folder

from latentsync.data.dataset import SyncNetDataset
from latentsync.errors import ConfigError, DeviceError
from latentsync.models.checkpoint import read_checkpoint
from latentsync.models.syncnet import load_syncnet, sync_probability, visual_input
from latentsync.train.loop import load_config, resolve_config
from latentsync.train.syncnet import (
    SyncNetTrainConfig,
    add_train_syncnet_arguments,
    run_train_syncnet,
    syncnet_yaml,
    train_syncnet,
)

# A SyncNet small enough to train in seconds at 32 px: three blocks per encoder, 256-d embeddings (8 channels
# per GroupNorm group at 1x1; with 2 per group the embeddings degenerate to binary patterns and nothing learns).
TINY_MODEL = {
    "audio_encoder": {"in_channels": 1, "block_out_channels": [32, 64, 256],
                      "downsample_factors": [[4, 2], [4, 4], [5, 7]], "attn_blocks": [0, 0, 0]},  # 80x52 -> 20x26 -> 5x7 -> 1x1
    "visual_encoder": {"in_channels": 48, "block_out_channels": [32, 64, 256],
                       "downsample_factors": [[2, 4], 4, 2], "attn_blocks": [0, 0, 0]},  # 16x32 -> 8x8 -> 2x2 -> 1x1
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Two OpenMP threads on two shared, busy cores make every small op wait on a descheduled thread (5-10x
    slower); one thread keeps these tests in their time budget."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 px talking clips (trained at 32 px, so the resize path runs): 16 for training, 6 held out."""
    root = tmp_path_factory.mktemp("talking")
    talking_folder(root, 16, n_frames=75, size=64, seed=1, filelist="train.txt")
    talking_folder(root, 6, n_frames=75, size=64, seed=2, filelist="val.txt")
    return root


def _config(path: Path, root: Path, out: Path, **sections: dict) -> Path:
    config = {
        "model": TINY_MODEL,
        "data": {"root": str(root), "filelist": "train.txt", "resolution": 32, "batch_size": 8, "num_workers": 0,
                 "samples_per_epoch": 16},
        "optimizer": {"lr": 1.5e-4},
        "run": {"max_steps": 6, "ckpt_every": 2, "log_every": 1, "val_every": 1000, "output_dir": str(out)},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path.write_text(yaml.safe_dump(config))
    return path


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_training_learns_sync_on_held_out_clips(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = _config(tmp_path / "train.yaml", data, out,
                     data={"val_filelist": "val.txt", "val_samples": 64, "num_workers": 1, "samples_per_epoch": 640},
                     run={"max_steps": 60, "val_every": 60, "ckpt_every": 60, "log_every": 10})
    t0 = time.perf_counter()
    final = train_syncnet(config)
    seconds = time.perf_counter() - t0
    val = [(int(r["step"]), float(r["val_acc"]), float(r["val_loss"])) for r in _rows(out / "metrics.csv") if r["val_acc"]]
    (step0, before, loss0), (step1, after, loss1) = val
    print(f"val accuracy {before:.3f} -> {after:.3f}, loss {loss0:.3f} -> {loss1:.3f}, {step1} steps in {seconds:.1f} s")
    # measured: 0.50 -> 0.78, loss 0.75 -> 0.42 (60 steps of batch 8, ~22 s on two busy cores)
    assert (step0, step1) == (0, 60)
    assert before <= 0.6 and after >= 0.7 and loss1 < loss0 - 0.15
    rank = float([r for r in _rows(out / "metrics.csv") if r["val_rank"]][-1]["val_rank"])
    assert rank >= 0.7  # in-sync mels outscore shifted ones for the same frames
    assert final == out / "checkpoints" / "checkpoint-60.pt" and read_checkpoint(final).global_step == 60
    assert (out / "curves.png").stat().st_size > 0 and (out / "config.yaml").is_file()

    # The official file is the trained model: reloaded, it scores the same held-out samples identically.
    model = load_syncnet(out / "syncnet.yaml", final)
    val_set = SyncNetDataset(data, "val.txt", 32, samples_per_epoch=64, seed=1247 + 1)
    batch = {k: torch.stack([val_set[i][k] for i in range(64)]) for k in ("frames", "mel", "y")}
    with torch.no_grad():
        sims = sync_probability(*model(visual_input(batch["frames"]), batch["mel"]))
    assert ((sims > 0.5) == (batch["y"] > 0.5)).float().mean().item() == pytest.approx(after)


def test_resume_continues_steps_and_metrics_exactly(data: Path, tmp_path: Path) -> None:
    straight = train_syncnet(_config(tmp_path / "a.yaml", data, tmp_path / "a"))

    # Through the CLI entry point: 4 steps, then resume the same output_dir to 6.
    config = _config(tmp_path / "b.yaml", data, tmp_path / "b", run={"keep_last": 2}, ckpt={"resume_from": "latest"})
    parser = argparse.ArgumentParser()
    add_train_syncnet_arguments(parser)
    assert run_train_syncnet(parser.parse_args([str(config), "--set", "run.max_steps=4"])) == 0
    resumed = train_syncnet(config)

    assert resumed == tmp_path / "b" / "checkpoints" / "checkpoint-6.pt"
    assert sorted(p.name for p in resumed.parent.iterdir()) == [
        "checkpoint-4.pt", "checkpoint-4.train.pt", "checkpoint-6.pt", "checkpoint-6.train.pt"]  # keep_last 2
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a.global_step == b.global_step == 6
    # 2 steps per pass (16 samples / batch 8): resuming at step 4 is a pass boundary, so with the optimizer and RNG
    # state restored the resumed run repeats the uninterrupted one.
    for key in a.state_dict:
        torch.testing.assert_close(b.state_dict[key], a.state_dict[key], rtol=1e-5, atol=1e-6)
    rows = _rows(tmp_path / "b" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["time"]) for r in rows] == sorted(float(r["time"]) for r in rows)
    sidecar = torch.load(resumed.parent / "checkpoint-6.train.pt", weights_only=True)
    assert sidecar["global_step"] == 6 and all(s["step"] == 6 for s in sidecar["optimizer"]["state"].values())


def test_config_errors(data: Path, tmp_path: Path) -> None:
    def train(**sections: dict) -> Path:
        return train_syncnet(_config(tmp_path / "c.yaml", data, tmp_path / "c", **sections))

    with pytest.raises(ConfigError, match="unknown config key run.max_step "):
        train(run={"max_step": 3})
    with pytest.raises(ConfigError, match="run.max_steps must be int"):
        train(run={"max_steps": "many"})
    with pytest.raises(ConfigError, match="visual embedding has 1024 values but the audio embedding 256"):
        train(data={"resolution": 64})
    with pytest.raises(ConfigError, match="data.root is not set"):
        train(data={"root": ""})
    with pytest.raises(DeviceError, match="fp16 needs CUDA"):
        train(run={"mixed_precision": "fp16", "device": "cpu"})
    with pytest.raises(ConfigError, match="unknown SyncNet preset"):
        train_syncnet(_config(tmp_path / "c.yaml", data, tmp_path / "c"), {"model": "nope"})
    with pytest.raises(ConfigError, match="training config not found"):
        train_syncnet(tmp_path / "missing.yaml")


DDP_SCRIPT = """
import os, sys, torch
from latentsync.train import loop
from latentsync.train.syncnet import train_syncnet

save = loop.Checkpointer.save
def save_and_dump(self, step, model, stepper):  # every rank dumps the weights it ends with
    torch.save(loop.unwrap(model).state_dict(), self.dir.parent / f"rank{os.environ['RANK']}-step{step}.pt")
    return save(self, step, model, stepper)
loop.Checkpointer.save = save_and_dump
train_syncnet(sys.argv[1])
"""


def test_ddp_two_processes_agree(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    config = _config(tmp_path / "ddp.yaml", data, out, data={"batch_size": 4}, run={"max_steps": 3, "ckpt_every": 3})
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(config)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}-step3.pt", weights_only=True) for r in (0, 1))
    official = read_checkpoint(out / "checkpoints" / "checkpoint-3.pt")
    assert official.global_step == 3
    for key, value in official.state_dict.items():
        torch.testing.assert_close(rank0[key], value, rtol=0, atol=0)
        torch.testing.assert_close(rank1[key], value, rtol=0, atol=0)
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == [1, 2, 3]  # the main rank logs, once


@pytest.mark.parametrize("name", ["syncnet_small", "syncnet_real", "syncnet_16_pixel_attn"])
def test_packaged_configs_load_and_their_models_fit_the_data(name: str) -> None:
    cfg = load_config(SyncNetTrainConfig, resolve_config(name))
    model = syncnet_yaml(cfg)  # builds the model on the meta device and runs it at the configured size
    assert model["data"] == {"num_frames": 16, "resolution": cfg.data.resolution, "latent_space": False,
                             "lower_half": True}
    assert cfg.ckpt.resume_from == "latest"
    assert cfg.optimizer.lr == {"syncnet_small": 1e-4, "syncnet_real": 3e-4}.get(name, 1e-5)
    if name == "syncnet_real":  # frame-by-frame embeddings of motion; matching against the same clip 6+ frames away
        visual = model["model"]["visual_encoder"]
        assert visual["center_frames"] is True and visual["per_frame"] is True
        assert model["model"]["audio_encoder"]["time_steps"] == 16
        assert (cfg.data.resolution, cfg.loss.multiway, cfg.loss.min_shift) == (32, 1.0, 6)
    if name == "syncnet_16_pixel_attn":  # upstream's numbers
        run = cfg.run
        assert (cfg.data.resolution, cfg.data.batch_size, run.mixed_precision, run.grad_clip) == (256, 256, "fp16", 1.0)


def test_multiway_matching_picks_the_in_sync_mel_among_shifted_ones(data: Path) -> None:
    """The matching term is low when each window's embedding is closest to its in-sync mel and high when it is
    closest to a shifted one; the dataset's shifted mels come from the same clip, at least `min_shift` frames off;
    `_loss` adds the term only when `loss.multiway` is set."""
    from latentsync.train.syncnet import SyncNetLossConfig, _loss, multiway_loss

    gen = torch.Generator().manual_seed(0)
    candidates = torch.rand(8, 5, 256, generator=gen) ** 4  # sparse non-negative embeddings, as after the ReLU
    near = lambda k: candidates[:, k] + 0.01 * torch.rand(8, 256, generator=gen)  # noqa: E731
    chance = torch.log(torch.tensor(5.0))
    assert multiway_loss(near(0), candidates, 0.1) < 0.5 < chance < multiway_loss(near(3), candidates, 0.1)

    dataset = SyncNetDataset(data, "train.txt", 32, 16, samples_per_epoch=4, shifts=3, min_shift=4)
    item, plain = dataset[0], SyncNetDataset(data, "train.txt", 32, 16, samples_per_epoch=4)[0]
    assert item["shifted_mel"].shape == (3, *item["mel"].shape) and torch.equal(item["mel"], plain["mel"])
    s = dataset.sample(0)
    in_sync = dataset._mel(s.clip, s.start)
    assert not any(torch.equal(in_sync, m) for m in item["shifted_mel"])

    class Echo(torch.nn.Module):  # vision and audio embeddings straight from the inputs
        def forward(self, frames, mel):
            return frames.flatten(1)[:, :64].abs(), mel.flatten(1)[:, :64].abs()

    batch = {"frames": torch.rand(4, 16, 3, 8, 8, generator=gen), "mel": torch.rand(4, 1, 80, 52, generator=gen),
             "y": torch.tensor([1.0, 0.0, 1.0, 0.0]), "shifted_mel": torch.rand(4, 3, 1, 80, 52, generator=gen)}
    stepper = argparse.Namespace(device=torch.device("cpu"), autocast=lambda: torch.autocast("cpu", enabled=False))
    pair, _, off = _loss(Echo(), batch, stepper)
    both, _, term = _loss(Echo(), batch, stepper, SyncNetLossConfig(multiway=0.5))
    assert off == 0.0 and term > 0 and torch.isclose(both, pair + 0.5 * term)
