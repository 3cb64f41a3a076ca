"""Training loop: schedule, metrics, NaN detection, exact resume, DDP (2 processes, gloo) == 1 process,
FSDP2 resume, CLI and torchrun argv.

    .venv/bin/python -m pytest -q tests/test_train_loop.py
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline_lib.errors import ConfigError, ToolError
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.loop import NonFiniteLossError, Trainer
from pipeline_lib.train.optim import lr_factor
from pipeline_lib.train.parallel import DistEnv
from pipeline_lib.train.run import build_torchrun_argv, launch_torchrun, load_train_config
from pipeline_lib.train.synthetic import write_synthetic_shards

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("loop") / "shards", rows=256, row_group_rows=8, seed=2)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", max_len=96, batch_tokens=384, num_workers=0, grad_accum=2, warmup_steps=2,
                total_steps=6, lr=2e-3, checkpoint_every=100, export_hf=False, shuffle_window=2)
    return TrainConfig(**{**base, **kw})


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_esm2_schedule():
    f = dict(warmup=2000, total=500_000)
    assert lr_factor(0, **f) == pytest.approx(1 / 2000) and lr_factor(1999, **f) == 1.0
    assert lr_factor(2000, **f) == 1.0
    assert lr_factor(450_000, **f) == pytest.approx(0.1) and lr_factor(499_999, **f) == pytest.approx(0.1)
    mid = (2000 + 450_000) // 2
    assert lr_factor(mid, **f) == pytest.approx(0.55, abs=1e-6)


def test_train_metrics_and_callback(shards: Path, tmp_path: Path):
    seen: list[dict] = []
    result = Trainer(_cfg(total_steps=3, export_hf=True), shards_dir=shards, output_dir=tmp_path,
                     env=DistEnv(), on_metrics=seen.append).train()
    assert [r["step"] for r in seen] == [1, 2, 3]
    keys = {"loss", "perplexity", "lr", "grad_norm", "tokens", "targets", "tokens_per_s", "mfu", "step_time_s",
            "padding_frac"}
    assert keys <= set(seen[0])
    assert seen[0]["lr"] == pytest.approx(1e-3) and seen[1]["lr"] == pytest.approx(2e-3)
    assert _losses(tmp_path) == {r["step"]: r["loss"] for r in seen}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "index_cache").glob("train.cluster_c50.*.npz"))   # restarts skip the cluster column
    assert (result.checkpoint / "model.safetensors").is_file() and (result.hf_dir / "config.json").is_file()


def test_resume_matches_uninterrupted_run(shards: Path, tmp_path: Path):
    cfg = _cfg(num_workers=2)
    full = Trainer(cfg, shards_dir=shards, output_dir=tmp_path / "full", env=DistEnv()).train()
    first = Trainer(cfg.model_copy(update={"max_steps": 3}), shards_dir=shards, output_dir=tmp_path / "split",
                    env=DistEnv()).train()
    assert first.step == 3
    second = Trainer(cfg, shards_dir=shards, output_dir=tmp_path / "split", env=DistEnv())
    assert second.step == 3  # resumed from the step-3 checkpoint
    second.train()
    assert _losses(tmp_path / "split") == _losses(tmp_path / "full")   # bitwise, step for step
    assert len(_losses(tmp_path / "full")) == 6 and full.step == 6


def test_activation_checkpointing_gives_the_same_losses(shards: Path, tmp_path: Path):
    plain = Trainer(_cfg(total_steps=2), shards_dir=shards, output_dir=tmp_path / "a", env=DistEnv()).train()
    ac = Trainer(_cfg(total_steps=2, activation_checkpointing=True), shards_dir=shards, output_dir=tmp_path / "b",
                 env=DistEnv()).train()
    assert [r["loss"] for r in plain.metrics] == pytest.approx([r["loss"] for r in ac.metrics], abs=1e-6)
    names = {n for n, _ in Trainer(_cfg(activation_checkpointing=True), shards_dir=shards, output_dir=tmp_path / "c",
                                   env=DistEnv()).model.state_dict().items()}
    assert "layers.0.attn.qkv.weight" in names   # wrappers applied from outside keep parameter names


@pytest.mark.parametrize("with_ac", [False, True], ids=["compile", "compile+checkpointing"])
def test_compiled_blocks_give_the_losses_of_eager_blocks(shards: Path, tmp_path: Path, with_ac: bool):
    eager = Trainer(_cfg(total_steps=2), shards_dir=shards, output_dir=tmp_path / "a", env=DistEnv()).train()
    compiled = Trainer(_cfg(total_steps=2, compile=True, activation_checkpointing=with_ac), shards_dir=shards,
                       output_dir=tmp_path / "b", env=DistEnv())
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in compiled.model.layers)
    assert [r["loss"] for r in compiled.train().metrics] == pytest.approx([r["loss"] for r in eager.metrics],
                                                                          abs=1e-4)


def test_non_finite_loss_names_step_and_samples(shards: Path, tmp_path: Path):
    trainer = Trainer(_cfg(), shards_dir=shards, output_dir=tmp_path, env=DistEnv())
    steps = iter(trainer.loader)
    trainer.train_step(next(steps))
    with torch.no_grad():
        trainer.model.layers[0].fc1.weight[0, 0] = float("nan")
    micro = next(steps)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train_step(micro)
    assert err.value.step == 2 and err.value.ids == [i for b in micro for i in b.ids]
    assert "step 2" in str(err.value) and micro[0].ids[0] in str(err.value)


def test_ddp_two_processes_match_one_process(shards: Path, tmp_path: Path):
    """torchrun, 2 ranks x 1 micro-batch (gloo) == 1 process x 2 micro-batches: same losses, step for step.
    Launched like the Prefect task does it (argv, subprocess, metrics followed into a callback)."""
    seen: list[dict] = []
    ddp_cfg = _cfg(total_steps=4, grad_accum=1, nproc=2, eval_every=4, eval_split="train", eval_batches=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = launch_torchrun(ddp_cfg, config_path=tmp_path / "cfg.json", shards_dir=shards,
                             output_dir=tmp_path / "ddp", on_metrics=seen.append, poll_s=0.2, env=env)
    assert result.step == 4 and result.checkpoint is not None
    Trainer(_cfg(total_steps=4, grad_accum=2), shards_dir=shards, output_dir=tmp_path / "one", env=DistEnv()).train()
    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert [r["step"] for r in seen] == [1, 2, 3, 4] and {r["step"]: r["loss"] for r in seen} == ddp
    assert all(abs(ddp[s] - one[s]) < 1e-5 for s in ddp), (ddp, one)
    # validation under DDP: the sums of both ranks' batches, as computed here from the final weights
    assert seen[-1]["valid/loss"] == pytest.approx(_valid_loss_of_ranks(ddp_cfg, shards, result.checkpoint, 2),
                                                  abs=1e-5)
    with pytest.raises(ToolError, match="exit code"):
        launch_torchrun(ddp_cfg.model_copy(update={"nproc": 1}), config_path=tmp_path / "bad.json",
                        shards_dir=tmp_path / "missing", output_dir=tmp_path / "bad", poll_s=0.2, env=env)


def _valid_loss_of_ranks(cfg: TrainConfig, shards: Path, checkpoint: Path, world: int) -> float:
    """valid/loss of a checkpoint over the validation batches of ``world`` ranks, computed here directly."""
    import itertools

    import torch.nn.functional as F
    from safetensors.torch import load_file

    from pipeline_lib.train.batching import IGNORE
    from pipeline_lib.train.loader import build_index, micro_batches
    from pipeline_lib.train.model import build_model, masked_logits
    from pipeline_lib.train.validation import EVAL_SEED

    model, _ = build_model(cfg)
    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    every_row = cfg.model_copy(update={"cluster_level": None})
    index = build_index(every_row, shards, split=cfg.eval_split)
    total, n = 0.0, 0
    with torch.no_grad():
        for rank in range(world):
            stream = micro_batches(index, every_row, shard=rank, num_shards=world, seed=EVAL_SEED)
            for b, _ in itertools.islice(stream, cfg.eval_batches):
                targets = b.labels != IGNORE
                total += F.cross_entropy(masked_logits(model, b, targets), b.labels[targets], reduction="sum").item()
                n += int(targets.sum())
    return total / n


_FSDP_SCRIPT = """
import json, sys
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.loop import Trainer
from pipeline_lib.train.parallel import close_distributed
cfg = TrainConfig.model_validate(json.loads(sys.argv[1]))
out = sys.argv[2]
Trainer(cfg.model_copy(update={"max_steps": 2}), shards_dir=sys.argv[3], output_dir=out).train()
resumed = Trainer(cfg.model_copy(update={"export_hf": True}), shards_dir=sys.argv[3], output_dir=out)
assert resumed.step == 2
resumed.train()
# meta-device init: each rank allocates only its shard, then trains
meta = Trainer(cfg.model_copy(update={"meta_init": True, "max_steps": 3, "lr": 5e-3}), shards_dir=sys.argv[3],
               output_dir=out + "_meta")
params = list(meta.model.parameters())
local, full = sum(p.to_local().numel() for p in params), sum(p.numel() for p in params)
emb = meta.model.embed_tokens.weight.full_tensor()
fc1 = meta.model.layers[0].fc1.weight.full_tensor()
half = fc1.shape[0] // 2
losses = [r["loss"] for r in meta.train().metrics]
if meta.env.is_main:
    print("META " + json.dumps({"local": local, "full": full, "losses": losses, "emb_std": float(emb.std()),
                                "pad_row": float(emb[1].abs().sum()),
                                "shards_differ": not bool((fc1[:half] == fc1[half:]).any())}))
close_distributed()
"""


def test_fsdp_two_processes_resume_exactly(shards: Path, tmp_path: Path):
    """FSDP2 (gloo, 2 ranks): stop at step 2, resume in a new Trainer; losses equal a 1-process run."""
    script = tmp_path / "fsdp_run.py"
    script.write_text(_FSDP_SCRIPT)
    fsdp_cfg = _cfg(total_steps=4, grad_accum=1, strategy="fsdp", eval_every=2, eval_split="train", eval_batches=1)
    cfg = fsdp_cfg.model_dump_json()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
            cfg, str(tmp_path / "a"), str(shards)]
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    Trainer(_cfg(total_steps=4, grad_accum=2), shards_dir=shards, output_dir=tmp_path / "one", env=DistEnv()).train()
    fsdp, one = _losses(tmp_path / "a"), _losses(tmp_path / "one")
    assert list(fsdp) == [1, 2, 3, 4] and all(abs(fsdp[s] - one[s]) < 1e-5 for s in fsdp), (fsdp, one)
    assert (tmp_path / "a" / "hf" / "model.safetensors").is_file()
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    valid = {r["step"]: r["valid/loss"] for r in records if "valid/loss" in r}
    assert list(valid) == [2, 4]      # step 2 by the first Trainer, step 4 by the resumed one
    ckpt = tmp_path / "a" / "checkpoints" / "step_00000004"
    assert valid[4] == pytest.approx(_valid_loss_of_ranks(fsdp_cfg, shards, ckpt, 2), abs=1e-5)
    meta = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("META "))[5:])
    assert meta["local"] <= meta["full"] // 2 + 64          # no rank held the full weights
    assert meta["emb_std"] == pytest.approx(0.02, rel=0.2) and meta["pad_row"] == 0.0
    assert meta["shards_differ"]                             # no unit repeated across the shards
    assert len(meta["losses"]) == 3 and all(math.isfinite(x) for x in meta["losses"])
    assert meta["losses"][-1] < meta["losses"][0]


@pytest.mark.parametrize("architecture", ["esm2", "msa_transformer"])
def test_meta_init_materialises_the_same_weights(architecture: str):
    """Built on the meta device (no storage) and materialised: bitwise the weights of a CPU build."""
    from pipeline_lib.train.model import build_model, is_meta
    from pipeline_lib.train.parallel import parallelize

    cfg = _cfg(architecture=architecture, batch_tokens=16384, seed=5)
    direct, _ = build_model(cfg)
    meta, _ = build_model(cfg, device="meta")
    assert is_meta(meta) and not is_meta(direct)
    parallelize(meta, cfg, DistEnv())
    assert not is_meta(meta)
    a, b = direct.state_dict(), meta.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    other, _ = build_model(cfg.model_copy(update={"seed": 6}))
    fc1 = "layers.0.fc1.weight" if architecture == "esm2" else "layers.0.ffn.layer.fc1.weight"
    assert not torch.equal(other.state_dict()[fc1], a[next(k for k in a if "fc1.weight" in k)])


def test_torchrun_argv_and_config_loading(tmp_path: Path):
    cfg = TrainConfig(model="35M", nproc=4, lr=1e-4)
    argv = build_torchrun_argv(cfg, config_path=tmp_path / "c.json", shards_dir="/d/shards", output_dir="/d/out")
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert argv[argv.index("--nproc-per-node") + 1] == "4" and "--standalone" in argv
    assert argv[-8:] == ["-m", "pipeline_lib.train.run", "--config", str(tmp_path / "c.json"),
                         "--shards", "/d/shards", "--out", "/d/out"]
    assert load_train_config(tmp_path / "c.json") == cfg
    multi = TrainConfig(nnodes=2, nproc=8, rdzv_endpoint="node0:29500")
    argv = build_torchrun_argv(multi, config_path=tmp_path / "m.json", shards_dir="s", output_dir="o")
    assert "--standalone" not in argv and argv[argv.index("--rdzv-endpoint") + 1] == "node0:29500"
    (tmp_path / "p.yaml").write_text("name: x\ntrain:\n  model: tiny\n  lr: 0.001\n")
    got = load_train_config(tmp_path / "p.yaml", ["train.lr=0.002", "grad_accum=4"])
    assert (got.model, got.lr, got.grad_accum) == ("tiny", 0.002, 4)
    with pytest.raises(ConfigError, match="train.lrr: unknown key"):
        load_train_config(tmp_path / "p.yaml", ["lrr=1"])
    with pytest.raises(ConfigError):
        load_train_config(None, ["batch_tokens=100", "max_len=1024"])
