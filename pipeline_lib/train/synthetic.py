"""Synthetic token shards in the pipeline's shard layout, for tests and benchmarks.

    write_synthetic_shards("/tmp/shards", rows=512, row_group_rows=32, vocab="esm2")

Random proteins (lengths drawn from ``lengths`` or log-normal around ~300 residues like UniRef50) with
two cluster levels (c90 groups of ~2 rows, c50 groups of ~2 c90 clusters), written with
``schemas.sequence_shard_schema`` (plus ``sa_tokens`` for ``vocab="saprot"``) and a manifest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.io import sha256_file
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_3DI, SAPROT_ALPHABET

__all__ = ["write_synthetic_shards", "uniref_like_lengths"]

_AA = "ACDEFGHIKLMNPQRSTVWY"


def uniref_like_lengths(rng: np.random.Generator, n: int, *, low: int = 30, high: int = 2000) -> np.ndarray:
    """Log-normal residue counts (median ~270, long tail), clipped to [low, high]."""
    return np.clip(rng.lognormal(mean=5.6, sigma=0.6, size=n), low, high).astype(np.int64)


def _table(rng: np.random.Generator, ids: range, lengths: np.ndarray, saprot: bool) -> pa.Table:
    aa_ids = np.array([ESM_ALPHABET.index[a] for a in _AA])
    tokens, sa_tokens, seqs, dis = [], [], [], []
    for n in lengths:
        idx = rng.integers(0, 20, size=n)
        tokens.append(np.concatenate(([0], aa_ids[idx], [2])).astype(np.uint8))
        if saprot:
            di = rng.integers(0, len(SAPROT_3DI), size=n)
            seqs.append("".join(_AA[i] for i in idx))
            dis.append("".join(SAPROT_3DI[i] for i in di))
            sa = np.array(SAPROT_ALPHABET.encode_pairs(seqs[-1], dis[-1]), dtype=np.int16)
            sa_tokens.append(sa)
    names = [f"P{i:07d}" for i in ids]
    c90 = [f"C90_{i // 2:07d}" for i in ids]
    c50 = [f"C50_{i // 4:07d}" for i in ids]
    cols: dict[str, Any] = {
        "id": names, "seq_hash": [f"{i:032x}" for i in ids], "cluster_c90": c90, "cluster_c50": c50,
        "length": pa.array(lengths, pa.int32()), "tokens": pa.array([t.tobytes() for t in tokens], pa.binary()),
    }
    if not saprot:
        return pa.table(cols, schema=schemas.sequence_shard_schema(["c90", "c50"]))
    cols.update({"aa_seq": seqs, "threedi_seq": dis, "sa_tokens": pa.array(sa_tokens, pa.list_(pa.int16())),
                 "mean_plddt": pa.array([90.0] * len(seqs), pa.float32()),
                 "structure_source": ["synthetic"] * len(seqs), "structure_version": ["0"] * len(seqs)})
    return pa.table(cols, schema=schemas.structure_shard_schema(["c90", "c50"]))


def write_synthetic_shards(out_dir: str | Path, *, rows: int = 512, row_group_rows: int = 32,
                           rows_per_file: int = 256, lengths: np.ndarray | None = None, seed: int = 0,
                           vocab: str = "esm2", split: str = "train") -> Path:
    """Write ``<out>/<split>/part-NNNNN.parquet`` and ``<out>/manifest.json``; returns ``out``."""
    out = Path(out_dir)
    (out / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = uniref_like_lengths(rng, rows) if lengths is None else np.asarray(lengths, dtype=np.int64)
    files = []
    for f, start in enumerate(range(0, rows, rows_per_file)):
        stop = min(rows, start + rows_per_file)
        table = _table(rng, range(start, stop), lengths[start:stop], vocab == "saprot")
        path = out / split / f"part-{f:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_rows)
        n_tok = int(sum(len(t) for t in table.column("tokens").to_pylist()))
        files.append({"path": f"{split}/{path.name}", "rows": table.num_rows, "tokens": n_tok,
                      "sha256": sha256_file(path)})
    manifest = {"schema_version": schemas.SCHEMA_VERSION, "kind": "structure" if vocab == "saprot" else "sequence",
                "vocabulary": {"name": ESM_ALPHABET.name, "tokens": list(ESM_ALPHABET.tokens)},
                "tokens_include_special": True, "cluster_levels": ["c90", "c50"],
                "splits": {split: {"files": files, "rows": rows, "tokens": sum(f["tokens"] for f in files)}}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
