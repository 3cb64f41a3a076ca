"""Unsupervised contact prediction from attention maps (ESM-1b / ESM-2 style) and its precision.

    result = evaluate_contacts(HFMaskedLM(model), train=["pdb/1xso.pdb"], test=["pdb/8crb.pdb:B"])
    result.mean["long"]["L"]          # mean top-L long-range precision over the held-out structures

Contacts: first chain unless ``path:CHAIN`` names one; the model reads the chain's full sequence (mmCIF
``_entity_poly_seq`` / PDB ``SEQRES``; see ``structures.parse.full_sequence``) so that separations are counted
along it (residue numbering, not the index of the modelled residues), and only pairs of resolved residues
(those with a C-alpha) are fitted and scored; without a declared sequence, the residues as modelled. Two
residues touch when their C-beta atoms (C-alpha for Gly or a missing C-beta) are closer than ``cutoff`` (8 A).
Features: attention weights of every layer and head, ``<cls>``/``<eos>`` rows and columns removed,
symmetrized (A + A^T) and APC-corrected (A - rowsum x colsum / total): [L, L, layers x heads].
Regression: the one ESM fits, scikit-learn's L1 logistic regression (liblinear, ``l1_c`` = C = 0.15, raw
features) on residue pairs i < j with j - i >= ``min_separation`` of the training structures
(``max_train_pairs`` sampled).
Precision at L, L/2, L/5 (L = chain length) in the short (6-11), medium (12-23) and long (>= 24) ranges:
the top-k scored pairs of the range, k = L // fraction (or all pairs of the range when fewer).
"""
from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluate.config import ContactsConfig
from pipeline_lib.evaluate.model import MaskedLM
from pipeline_lib.structures.parse import full_sequence, parse_structure

__all__ = ["RANGES", "FRACTIONS", "StructureSpec", "ContactTarget", "ContactRegression", "ContactResult",
           "StructurePrecision",
           "parse_spec", "expand_specs", "load_target", "contact_map", "symmetrize", "apc",
           "attention_features", "fit_logistic_l1", "contact_precisions", "evaluate_contacts",
           "evaluate_contacts_config"]

log = logging.getLogger(__name__)
RANGES: dict[str, tuple[int, int | None]] = {"short": (6, 11), "medium": (12, 23), "long": (24, None)}
FRACTIONS: dict[str, int] = {"L": 1, "L/2": 2, "L/5": 5}


@dataclass(frozen=True)
class StructureSpec:
    path: str
    chain: str | None = None


@dataclass(frozen=True, eq=False)
class ContactTarget:
    """``sequence`` is what the model reads: the chain's full sequence when the file declares one.
    ``resolved`` marks the residues with coordinates (None: all); only pairs of resolved residues are scored."""

    name: str
    sequence: str
    contacts: np.ndarray        # bool [L, L]
    resolved: np.ndarray | None = None  # bool [L]

    def scored(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Which of the pairs (i, j) have both residues resolved."""
        if self.resolved is None:
            return np.ones(len(i), dtype=bool)
        return self.resolved[i] & self.resolved[j]


SpecLike = str | os.PathLike[str] | StructureSpec


def parse_spec(text: SpecLike) -> StructureSpec:
    """``"a/1abc.pdb"`` or ``"a/1abc.pdb:B"`` (chain B) -> StructureSpec; a Path is taken as it is."""
    if isinstance(text, StructureSpec):
        return text
    if not isinstance(text, str):
        return StructureSpec(os.fspath(text))
    path, sep, chain = text.rpartition(":")
    if sep and path and chain and "/" not in chain and not os.path.exists(text):
        return StructureSpec(path, chain)
    return StructureSpec(text)


def expand_specs(items: Sequence[SpecLike]) -> list[StructureSpec]:
    """Globs expanded (sorted); an item matching nothing is kept as given (and fails when read)."""
    out = []
    for item in items:
        spec = parse_spec(item)
        pattern = glob.has_magic(spec.path) and not os.path.exists(spec.path)  # an existing file is never a pattern
        paths = sorted(glob.glob(spec.path)) if pattern else [spec.path]
        out += [StructureSpec(p, spec.chain) for p in paths] or [spec]
    return out


def contact_map(cb: np.ndarray, ca: np.ndarray, cutoff: float = 8.0) -> np.ndarray:
    """bool [L, L]: C-beta distance < cutoff, C-alpha where the C-beta is missing (NaN)."""
    xyz = np.where(np.isfinite(cb).all(axis=1, keepdims=True), cb, ca).astype(np.float64)
    d = np.sqrt(((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1))
    return np.nan_to_num(d, nan=np.inf) < cutoff  # a residue without coordinates touches nothing


def load_target(spec: SpecLike, *, cutoff: float = 8.0) -> ContactTarget:
    spec = parse_spec(spec)
    chains = parse_structure(spec.path)
    if spec.chain is None:
        chain = chains[0]
    else:
        found = [c for c in chains if c.chain_id == spec.chain]
        if not found:
            raise DataValidationError(f"no chain {spec.chain!r}; chains are {[c.chain_id for c in chains]}",
                                      path=spec.path)
        chain = found[0]
    full = full_sequence(spec.path, chain)
    if full is None or len(full[0]) == len(chain):
        return ContactTarget(chain.name, chain.sequence, contact_map(chain.cb, chain.ca, cutoff))
    seq, pos = full  # unresolved residues: the model reads them, no pair with one of them is scored
    cb, ca = np.full((len(seq), 3), np.nan), np.full((len(seq), 3), np.nan)
    cb[pos], ca[pos] = chain.cb, chain.ca
    resolved = np.zeros(len(seq), dtype=bool)
    resolved[pos] = True
    log.info("contacts: %s has %d of %d residues resolved; the model reads the full sequence", chain.name,
             len(chain), len(seq))
    return ContactTarget(chain.name, seq, contact_map(cb, ca, cutoff), resolved)


def symmetrize(x: torch.Tensor) -> torch.Tensor:
    """x + x^T over the last two dimensions."""
    return x + x.transpose(-1, -2)


def apc(x: torch.Tensor) -> torch.Tensor:
    """Average product correction over the last two dimensions: x - rowsum x colsum / total."""
    a1 = x.sum(-1, keepdim=True)
    a2 = x.sum(-2, keepdim=True)
    a12 = x.sum((-1, -2), keepdim=True)
    return x - a1 * a2 / a12


def attention_features(model: MaskedLM, sequence: str, *, window: int = 1022,
                       threedi: str | None = None) -> np.ndarray:
    """float32 [L, L, layers x heads] (layer-major) for one sequence of at most ``window`` residues.

    A structure-aware (SaProt) model reads ``sequence`` paired with ``threedi`` (default: all ``#``).
    """
    if len(sequence) > window:
        raise ValueError(f"sequence of {len(sequence)} residues is longer than the window of {window}")
    alphabet = model.alphabet
    if "A" in alphabet.index:
        ids = alphabet.encode_array(sequence).astype(np.int64)
    else:
        ids = np.asarray(alphabet.encode_pairs(sequence, threedi or "#" * len(sequence)), dtype=np.int64)
    tokens = torch.as_tensor(ids)[None]
    att = model.attentions(tokens)[0, :, :, 1:-1, 1:-1]          # [layers, heads, L, L]
    layers, heads, n, _ = att.shape
    feats = apc(symmetrize(att.reshape(layers * heads, n, n).double()))
    return feats.permute(1, 2, 0).float().cpu().numpy()


def _pair_index(n: int, lo: int, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=lo)
    if hi is not None:
        keep = (j - i) <= hi
        i, j = i[keep], j[keep]
    return i, j


def fit_logistic_l1(x: np.ndarray, y: np.ndarray, *, c: float = 0.15) -> tuple[np.ndarray, float]:
    """Weights [F] and intercept of the regression ESM fits (esm/examples, ``contact_regression``):
    scikit-learn's L1 logistic regression with liblinear (``penalty="l1"``, spelled ``l1_ratio=1`` since
    scikit-learn 1.8) and C = ``c`` on the raw features, so that precisions are comparable with the published
    ones (liblinear penalises the intercept as well). ``random_state=0``: liblinear visits the features in a
    random order, and the pipeline's results repeat."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", random_state=0)
    model.fit(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return model.coef_[0].copy(), float(model.intercept_[0])


@dataclass
class ContactRegression:
    weights: np.ndarray   # [F]
    bias: float

    @classmethod
    def fit(cls, features: Sequence[np.ndarray], targets: Sequence[ContactTarget], *, min_separation: int = 6,
            l1_c: float = 0.15, max_pairs: int = 200_000, seed: int = 0) -> ContactRegression:
        xs, ys = [], []
        for feat, tgt in zip(features, targets, strict=False):
            i, j = _pair_index(len(tgt.sequence), min_separation)
            keep = tgt.scored(i, j)
            i, j = i[keep], j[keep]
            xs.append(feat[i, j])
            ys.append(tgt.contacts[i, j])
        x, y = np.concatenate(xs), np.concatenate(ys).astype(np.float64)
        if len(y) > max_pairs:
            keep = np.random.default_rng(seed).choice(len(y), size=max_pairs, replace=False)
            x, y = x[keep], y[keep]
        if y.min() == y.max():
            raise DataValidationError("training structures give only one class of residue pairs")
        w, b = fit_logistic_l1(x, y, c=l1_c)
        return cls(w, b)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Contact probabilities [L, L] from features [L, L, F]."""
        return 1.0 / (1.0 + np.exp(-(features.astype(np.float64) @ self.weights + self.bias)))


def contact_precisions(pred: np.ndarray, true: np.ndarray, *, min_separation: int = 6,
                       resolved: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """{range: {"L": p, "L/2": p, "L/5": p}}: precision of the top-(L // fraction) pairs of each range,
    among the pairs of ``resolved`` residues (all when None); L is the full length (as ESM's
    ``compute_precisions``, which masks pairs without a known contact)."""
    n = len(true)
    out: dict[str, dict[str, float]] = {}
    for name, (lo, hi) in RANGES.items():
        i, j = _pair_index(n, max(lo, min_separation), hi)
        if resolved is not None:
            keep = resolved[i] & resolved[j]
            i, j = i[keep], j[keep]
        order = np.argsort(-pred[i, j], kind="stable")
        hits = true[i, j][order]
        out[name] = {label: (float(hits[: min(n // frac, len(hits))].mean())
                             if min(n // frac, len(hits)) > 0 else float("nan"))
                     for label, frac in FRACTIONS.items()}
    return out


@dataclass(frozen=True)
class StructurePrecision:
    name: str
    length: int
    precision: dict[str, dict[str, float]]                  # range -> fraction -> precision


@dataclass
class ContactResult:
    mean: dict[str, dict[str, float]]                       # range -> fraction -> mean over test structures
    per_structure: list[StructurePrecision] = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _crop(t: ContactTarget, window: int) -> ContactTarget:
    """At most ``window`` residues, starting at the first resolved one (the first residue when all are)."""
    if len(t.sequence) <= window:
        return t
    first = int(np.argmax(t.resolved)) if t.resolved is not None else 0
    a = max(0, min(first, len(t.sequence) - window))
    b = a + window
    log.info("contacts: %s cropped from %d to residues %d-%d", t.name, len(t.sequence), a + 1, b)
    return ContactTarget(t.name, t.sequence[a:b], t.contacts[a:b, a:b],
                         None if t.resolved is None else t.resolved[a:b])


def evaluate_contacts(model: MaskedLM, train: Sequence[SpecLike], test: Sequence[SpecLike],
                      *, min_separation: int = 6, cutoff: float = 8.0, l1_c: float = 0.15,
                      max_train_pairs: int = 200_000, seed: int = 0, window: int = 1022) -> ContactResult:
    """Fit the regression on ``train`` structures, report precisions on ``test`` structures."""
    if not train or not test:
        raise DataValidationError(f"contacts need training and test structures (got {len(train)} and {len(test)})")
    tr = [_crop(load_target(s, cutoff=cutoff), window) for s in expand_specs(train)]
    reg = ContactRegression.fit([attention_features(model, t.sequence, window=window) for t in tr], tr,
                                min_separation=min_separation, l1_c=l1_c, max_pairs=max_train_pairs, seed=seed)
    per = []
    for spec in expand_specs(test):
        t = _crop(load_target(spec, cutoff=cutoff), window)
        prec = contact_precisions(reg.predict(attention_features(model, t.sequence, window=window)), t.contacts,
                                  min_separation=min_separation, resolved=t.resolved)
        per.append(StructurePrecision(t.name, len(t.sequence), prec))
    mean = {r: {f: _mean([p.precision[r][f] for p in per]) for f in FRACTIONS} for r in RANGES}
    return ContactResult(mean=mean, per_structure=per, n_train=len(tr), n_test=len(per))


def evaluate_contacts_config(model: MaskedLM, cfg: ContactsConfig, *, window: int = 1022) -> ContactResult:
    """:func:`evaluate_contacts` with the structure lists of ``cfg`` (an int N: first N test files train)."""
    test = expand_specs(cfg.test_structures)
    if isinstance(cfg.train_structures, int):
        test = sorted(test, key=lambda s: (Path(s.path).name, s.chain or ""))
        train, test = test[: cfg.train_structures], test[cfg.train_structures:]
    else:
        train = expand_specs(cfg.train_structures)
    return evaluate_contacts(model, train, test, min_separation=cfg.min_separation, cutoff=cfg.cutoff,
                             l1_c=cfg.l1_c, max_train_pairs=cfg.max_train_pairs, seed=cfg.seed, window=window)
