"""Zero-shot variant-effect scores from a masked language model, and their agreement with DMS data.

    lm = HFMaskedLM(model)                                   # any evaluate.model.MaskedLM
    scores = score_variants(lm, wild_type, assay.mutations, method="masked_marginal")
    results = evaluate_dms(lm, cfg.evaluate)                 # one AssayResult per configured file
    rho = spearman(scores, assay.scores)

Masked marginal (ESM-1v): for each mutated position i, mask i in the wild type and score
``log p(mut_i) - log p(wt_i)``; a multi-mutant sums over its positions. Each distinct position of an assay
is masked and run once, the masked copies batched. Wild-type marginal: the same difference read from one
unmasked forward pass of the wild type. Sequences longer than ``window`` residues are cut to a window of
``window`` residues around the position (ProteinGym's ``get_optimal_window``), wrapped in ``<cls>``/``<eos>``.

SaProt (structure-aware alphabet): residue i is the pair (amino acid, 3Di letter); masking sets the amino
acid to ``#`` and keeps the 3Di letter; P(amino acid) is the sum of the probabilities of its 21 pairs.
Without a 3Di string every residue's 3Di letter is ``#`` (no structure). Multi-mutants use the same
per-position masking as ESM-1v (SaProt's own script masks all positions of a variant at once).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluate.config import DmsConfig
from pipeline_lib.evaluate.dms import DmsAssay, Mutation, read_dms
from pipeline_lib.evaluate.model import AMINO_ACIDS, MaskedLM, aa_token_groups, pad_batch
from pipeline_lib.tokenizer import Alphabet

__all__ = ["Method", "AssayResult", "VARIANT_SCHEMA", "variant_table", "window_bounds", "position_log_probs",
           "score_variants", "score_assay",
           "evaluate_dms", "spearman", "roc_auc", "rankdata"]

Method = Literal["masked_marginal", "wt_marginal"]
_AA_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}


@dataclass
class AssayResult:
    name: str
    method: str
    n: int                   # variants scored
    n_skipped: int           # bad rows left out (on_bad_row="skip")
    spearman: float
    auc: float | None        # None when the file has no binary labels
    scores: np.ndarray       # float64 [n], in the assay's row order
    assay: DmsAssay | None = None  # the checked assay the scores belong to (mutants, rows, measurements)


VARIANT_SCHEMA = pa.schema([("assay", pa.string()), ("method", pa.string()), ("row", pa.int64()),
                            ("mutant", pa.string()), ("score", pa.float64()), ("measured", pa.float64()),
                            ("label", pa.int8())])


def variant_table(results: Sequence[AssayResult]) -> pa.Table:
    """One row per scored variant of every assay: its data row (1-based), mutant, the model's score, the
    measured score and the binary label (null without one); for inspecting what a correlation hides."""
    parts = []
    for r in results:
        a = r.assay
        if a is None:
            continue
        parts.append(pa.table({"assay": [r.name] * r.n, "method": [r.method] * r.n, "row": a.rows,
                               "mutant": a.mutants, "score": r.scores, "measured": a.scores,
                               "label": a.binary if a.binary is not None else pa.nulls(r.n, pa.int8())},
                              schema=VARIANT_SCHEMA))
    return pa.concat_tables(parts) if parts else VARIANT_SCHEMA.empty_table()


def window_bounds(index: int, length: int, window: int) -> tuple[int, int]:
    """Residues ``[start, end)`` shown to the model for position ``index`` (ProteinGym ``get_optimal_window``)."""
    half = window // 2
    if length <= window:
        return 0, length
    if index < half:
        return 0, window
    if index >= length - half:
        return length - window, length
    return index - half, index - half + window       # ProteinGym: [index - half, index + half) (even window)


def _is_structure_aware(alphabet: Alphabet) -> bool:
    return "A" not in alphabet.index


def _residue_tokens(alphabet: Alphabet, wild_type: str, threedi: str | None) -> tuple[torch.Tensor, list[int]]:
    """Residue token ids of the wild type (no specials) and the id that masks each residue."""
    if _is_structure_aware(alphabet):
        di = (threedi or "#" * len(wild_type)).lower()
        if len(di) != len(wild_type):
            raise DataValidationError(f"3Di string has {len(di)} letters, the wild type {len(wild_type)}")
        ids = alphabet.encode_pairs(wild_type, di, add_special=False)
        masks = [alphabet.index.get("#" + d, alphabet.mask_idx) for d in di]
    else:
        ids = alphabet.encode_array(wild_type, add_special=False).tolist()
        masks = [alphabet.mask_idx] * len(wild_type)
    return torch.tensor(ids, dtype=torch.long), masks


def _wrap(alphabet: Alphabet, residues: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.tensor([alphabet.cls_idx]), residues, torch.tensor([alphabet.eos_idx])])


def position_log_probs(model: MaskedLM, wild_type: str, positions: Sequence[int], *, threedi: str | None = None,
                       masked: bool = True, window: int = 1022, batch_size: int = 8) -> np.ndarray:
    """float64 [len(positions), 20]: log P(amino acid, in ``AMINO_ACIDS`` order) at each 0-based position.

    ``masked``: the position is masked (one input per position, batched); else read from unmasked passes
    (one per distinct window). Log-probabilities are normalised over the whole vocabulary.
    """
    alphabet = model.alphabet
    residues, mask_ids = _residue_tokens(alphabet, wild_type, threedi)
    groups = aa_token_groups(alphabet)
    length = len(wild_type)
    jobs: list[tuple[torch.Tensor, int]] = []        # (input tokens, row read out)
    if masked:
        for p in positions:
            s, e = window_bounds(p, length, window)
            toks = _wrap(alphabet, residues[s:e])
            toks[p - s + 1] = mask_ids[p]
            jobs.append((toks, p - s + 1))
        inputs, rows = [j[0] for j in jobs], [[j[1]] for j in jobs]
    else:
        windows: dict[tuple[int, int], list[int]] = {}
        for k, p in enumerate(positions):
            windows.setdefault(window_bounds(p, length, window), []).append(k)
        inputs = [_wrap(alphabet, residues[s:e]) for s, e in windows]
        rows = [[positions[k] - s + 1 for k in ks] for (s, e), ks in windows.items()]
        order = [k for ks in windows.values() for k in ks]
    out: list[torch.Tensor] = []
    for b in range(0, len(inputs), batch_size):
        batch = pad_batch(inputs[b: b + batch_size], alphabet.pad_idx)    # equal lengths: no padding
        logits = model.logits(batch)
        for i, rr in enumerate(rows[b: b + batch_size]):
            logp = torch.log_softmax(logits[i, rr].cpu(), dim=-1)        # [r, V]
            out.append(torch.logsumexp(logp[:, groups], dim=-1))         # [r, 20]
    result = torch.cat(out).double().numpy() if out else np.zeros((0, 20))
    if not masked:
        result = result[np.argsort(order)]
    return result


def score_variants(model: MaskedLM, wild_type: str, variants: Sequence[Sequence[Mutation]], *,
                   method: Method = "masked_marginal", threedi: str | None = None, window: int = 1022,
                   batch_size: int = 8) -> np.ndarray:
    """float64 [len(variants)]: sum over mutations of log p(mut) - log p(wt) (0 for the wild type)."""
    positions = sorted({mu.index for v in variants for mu in v})
    for v in variants:
        for mu in v:
            if not 0 <= mu.index < len(wild_type):
                raise DataValidationError(f"mutation {mu.label()} is outside the wild type of {len(wild_type)}")
            if wild_type[mu.index] != mu.wt:
                raise DataValidationError(f"mutation {mu.label()} does not match the wild type "
                                          f"({wild_type[mu.index]} at position {mu.index + 1})")
    lp = position_log_probs(model, wild_type, positions, threedi=threedi, masked=method == "masked_marginal",
                            window=window, batch_size=batch_size)
    row = {p: i for i, p in enumerate(positions)}
    return np.asarray([sum(lp[row[mu.index], _AA_INDEX[mu.mt]] - lp[row[mu.index], _AA_INDEX[mu.wt]] for mu in v)
                       for v in variants], dtype=np.float64)


def score_assay(model: MaskedLM, assay: DmsAssay, *, method: Method = "masked_marginal", window: int = 1022,
                batch_size: int = 8, threedi: str | None = None) -> AssayResult:
    """Score every variant of ``assay`` and compare with its measurements."""
    scores = score_variants(model, assay.wild_type, assay.mutations, method=method,
                            threedi=threedi if threedi is not None else assay.threedi,
                            window=window, batch_size=batch_size)
    auc = roc_auc(assay.binary, scores) if assay.binary is not None else None
    return AssayResult(name=assay.name, method=method, n=len(assay), n_skipped=len(assay.skipped),
                       spearman=spearman(scores, assay.scores), auc=auc, scores=scores, assay=assay)


def evaluate_dms(model: MaskedLM, cfg: DmsConfig, *, window: int = 1022, batch_size: int = 8,
                 threedi_for_structure: Callable[[str, str | None], str] | None = None) -> list[AssayResult]:
    """Read, check and score every file of ``cfg.files``. For a structure-aware model, an assay with a
    ``structure`` but no ``threedi`` gets its 3Di string from ``threedi_for_structure(path, chain)``."""
    results = []
    for spec in cfg.files:
        assay = read_dms(spec, on_bad_row=cfg.on_bad_row)
        threedi = assay.threedi
        if threedi is None and assay.structure and _is_structure_aware(model.alphabet):
            if threedi_for_structure is None:
                raise DataValidationError("assay has a structure but no 3Di string, and no 3Di encoder was "
                                          "given (threedi_for_structure)", path=assay.path)
            threedi = threedi_for_structure(assay.structure, assay.chain)
        results.append(score_assay(model, assay, method=cfg.method, window=window, batch_size=batch_size,
                                   threedi=threedi))
    return results


# --- rank statistics (no SciPy dependency) ---------------------------------------------------------

def rankdata(a: np.ndarray | Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (``scipy.stats.rankdata(method='average')``)."""
    x = np.asarray(a, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    edges = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1], [True])))
    avg = (edges[:-1] + edges[1:] - 1) / 2.0 + 1.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, np.diff(edges))
    return ranks


def spearman(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x) - (len(x) + 1) / 2.0, rankdata(y) - (len(y) + 1) / 2.0
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def roc_auc(labels: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class only."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
