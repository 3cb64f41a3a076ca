"""Config section `train` (owned by the train stage): model, data, optimisation and launch settings.

    train:
      architecture: esm2       # esm2 (ESM-2 / SaProt on sequence shards) | msa_transformer (on MSA shards)
      model: 8M                 # tiny | 8M | 35M | 150M | 650M | 3B | 15B, or shape: {num_layers: .., ...}
      vocab: esm2               # esm2 | saprot
      batch_tokens: 65536       # per rank and micro-batch; global = batch_tokens x grad_accum x world
      total_steps: 500000
      strategy: ddp             # ddp | fsdp
      nproc: 8

Defaults are ESM-2's recipe (AdamW b=(0.9, 0.98), eps 1e-8, wd 0.01, peak LR 4e-4, 2,000 warmup steps,
linear decay to 0.1x over 90% of training, 15% masking 80/10/10, crops of 1024 tokens, uniform sampling
over clusters of the coarsest level). The MSA Transformer recipe: crops of ``max_len`` columns
(incl. the ``<cls>`` of every row), at most ``msa_max_rows`` rows and ``msa_max_tokens`` (2^14) tokens
per MSA (the query and random other rows), 15% of the MSA's tokens masked 80/10/10.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline_lib.config_ops import StrictModel
from pipeline_lib.model_sizes import FLAVORS, MSA_FLAVORS

__all__ = ["TrainConfig", "ModelShape"]


class ModelShape(StrictModel):
    num_layers: int = Field(..., ge=1)
    hidden_size: int = Field(..., ge=2)
    num_heads: int = Field(..., ge=1)
    intermediate_size: int | None = Field(None, ge=1, description="FFN width (default 4 x hidden_size).")


class TrainConfig(StrictModel):
    enabled: bool = Field(False, description="Run the train stage.")
    # --- model
    architecture: Literal["esm2", "esm1b", "msa_transformer"] = Field(
        "esm2", description="esm2: ESM-2 / SaProt on sequence shards; esm1b: ESM-1b / ESM-1v's network (learned "
                            "absolute positions, embedding LayerNorm; 650M is theirs) on the same shards; "
                            "msa_transformer: MSA Transformer on the msa stage's shards (model flavors tiny, 100M; "
                            "no Hugging Face export).")
    model: str = Field("8M", description="Size flavor: tiny, 8M, 35M, 150M, 650M, 3B, 15B (ignored when shape is set); "
                                         "MSA Transformer: tiny, 100M.")
    shape: ModelShape | None = Field(None, description="Explicit shape instead of a flavor.")
    vocab: Literal["esm2", "saprot"] = Field("esm2", description="ESM-2 (33 tokens) or SaProt (446 tokens).")
    init_from: str | None = Field(None, description="Hugging Face EsmForMaskedLM directory to start from "
                                                    "(its shape replaces model/shape).")
    # --- data
    shards_dir: str | None = Field(None, description="Shard directory (manifest.json); the CLI's --shards overrides.")
    split: str = Field("train", description="Split of the shards to train on.")
    token_column: str | None = Field(None, description="Token column (default: tokens for esm2, sa_tokens for saprot, "
                                                                "msa_tokens for msa_transformer).")
    cluster_level: str | None = Field("auto", description="Each epoch draws one random member per cluster of this "
                                                          "level; auto: the coarsest level of the manifest; "
                                                          "None: every row once per epoch.")
    max_len: int = Field(1024, ge=8, description="Tokens per sequence incl. <cls>/<eos>; longer ones are cropped "
                                                 "to a random window.")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="Share of residue positions predicted.")
    mask_token_prob: float = Field(0.8, ge=0, le=1, description="Of those, share replaced by the mask.")
    random_token_prob: float = Field(0.1, ge=0, le=1, description="Of those, share replaced by a random residue.")
    msa_max_rows: int = Field(1024, ge=1,
                              description="MSA Transformer: rows kept per MSA (the query and random others).")
    msa_max_tokens: int = Field(16384, ge=8, description="MSA Transformer: rows x columns kept per MSA (2^14), "
                                                         "fewer rows for longer crops.")
    msa_mask_gaps: bool = Field(True, description="MSA Transformer: gap tokens may be masked and predicted "
                                                  "(never <cls> or padding).")
    saprot_mask: Literal["aa_hash", "mask_token"] = Field(
        "aa_hash", description="SaProt masking: '#' + the original 3Di letter, or the <mask> token.")
    batch_tokens: int = Field(65536, ge=8, description="Token budget of one micro-batch on one rank (padding incl.).")
    packing: bool = Field(True, description="Pack several sequences per row (block-diagonal attention); "
                                            "False pads each sequence to the batch maximum.")
    shuffle_window: int = Field(4, ge=1, description="Row groups read and shuffled together.")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank.")
    # --- optimisation
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    clip_grad_norm: float | None = Field(1.0, gt=0, description="Max global gradient norm (None: no clipping).")
    lr: float = Field(4e-4, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay of matrices (not biases, norms, embeddings).")
    warmup_steps: int = Field(2000, ge=0)
    total_steps: int = Field(500_000, ge=1, description="Length of the schedule.")
    decay_fraction: float = Field(0.9, gt=0, le=1, description="LR reaches final_lr_ratio x peak at this share "
                                                               "of total_steps, then stays there.")
    final_lr_ratio: float = Field(0.1, ge=0, le=1)
    max_steps: int | None = Field(None, ge=1, description="Stop this run at this step (default total_steps); "
                                                          "the schedule still spans total_steps.")
    # --- validation
    eval_every: int | None = Field(None, ge=1, description="Steps between masked-LM evaluations on eval_split "
                                                           "(also at the last step); None: no validation.")
    eval_batches: int = Field(8, ge=1, description="Micro-batches per rank of each evaluation (the same batches "
                                                   "and masks every time).")
    eval_split: str = Field("valid", description="Split of the shards to evaluate on.")
    # --- runtime
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU.")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="Data parallel (DDP) or sharded (FSDP2).")
    nproc: int = Field(1, ge=1, description="Processes per node (torchrun --nproc-per-node).")
    nnodes: int = Field(1, ge=1, description="Nodes (torchrun --nnodes).")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous (multi-node).")
    rdzv_id: str = Field("plm-train", description="Rendezvous id shared by the nodes of one job.")
    meta_init: bool = Field(False, description="Build the model on the meta device and materialise it after "
                                               "sharding, so no rank holds the full fp32 weights (large FSDP models).")
    compile: bool = Field(False, description="torch.compile each transformer block.")
    activation_checkpointing: bool = Field(False, description="Recompute each block's activations in backward.")
    attn_backend: Literal["auto", "sdpa", "varlen"] = Field("auto", description="varlen: flash varlen on CUDA "
                                                                                 "for packed rows.")
    checkpoint_every: int = Field(1000, ge=1, description="Steps between checkpoints (one is also written at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="Newest checkpoints kept.")
    resume: bool = Field(True, description="Continue from the newest checkpoint in the output directory.")
    export_hf: bool = Field(True, description="Write a Hugging Face EsmForMaskedLM directory at the end "
                                                 "(ESM-2 / SaProt only).")
    log_every: int = Field(1, ge=1, description="Steps between metric records.")
    peak_tflops: float | None = Field(None, gt=0, description="Peak TFLOP/s per device for MFU "
                                                              "(default: known GPUs, else no MFU).")
    seed: int = Field(0, description="Seed of initialisation, sampling and masking.")
    output_dir: str | None = Field(None, description="Checkpoints, metrics, TensorBoard; the CLI's --out overrides.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.mask_token_prob + self.random_token_prob > 1:
            raise ValueError("mask_token_prob + random_token_prob must be <= 1")
        if self.batch_tokens < self.max_len:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must hold one sequence of max_len ({self.max_len})")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port)")
        sizes = MSA_FLAVORS if self.architecture == "msa_transformer" else FLAVORS
        if self.shape is None and self.init_from is None and self.model not in sizes:
            raise ValueError(f"model {self.model!r} is not a size of {self.architecture} ({', '.join(sizes)}); "
                             f"name one or give an explicit shape")
        if self.architecture == "msa_transformer":
            if self.vocab != "esm2" or self.init_from:
                raise ValueError("msa_transformer trains from scratch with the esm2 vocabulary (no init_from)")
            if self.batch_tokens < self.msa_max_tokens:
                raise ValueError(f"batch_tokens ({self.batch_tokens}) must hold one MSA of msa_max_tokens "
                                 f"({self.msa_max_tokens})")
        return self

    @property
    def column(self) -> str:
        if self.token_column:
            return self.token_column
        if self.architecture == "msa_transformer":
            return "msa_tokens"
        return "sa_tokens" if self.vocab == "saprot" else "tokens"
