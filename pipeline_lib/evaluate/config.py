"""Config section ``evaluate`` (owned by the evaluate stage): held-out perplexity, zero-shot variant
effects on deep mutational scans, unsupervised contact prediction.

    evaluate:
      enabled: true
      batch_size: 16
      perplexity: {splits: [valid, test], mask_seed: 0, max_sequences: 2000, pseudo_max_sequences: 32}
      dms:
        method: masked_marginal
        files:
          - {path: data/dms/BLAT_ECOLX_Stiffler_2015.csv}                  # ProteinGym layout
          - {path: data/other.tsv, mutant_column: variant, score_column: fitness,
             binary_column: null, sequence_column: null, wild_type: MKV..., offset: 23}
      contacts:
        train_structures: 20                       # the first 20 test_structures (sorted) train the regression
        test_structures: [data/pdb/*.pdb, data/afdb/AF-P69905-F1-model_v4.pdb:A]
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline_lib.config_ops import StrictModel

__all__ = ["EvaluateConfig", "PerplexityConfig", "DmsFileConfig", "DmsConfig", "ContactsConfig"]


class PerplexityConfig(StrictModel):
    enabled: bool = Field(True, description="Compute masked-token perplexity on held-out shards.")
    splits: list[str] = Field(["valid", "test"], min_length=1, description="Shard splits to evaluate.")
    mask_fraction: float = Field(0.15, gt=0, le=1, description="Residue positions masked per sequence (at least one).")
    mask_seed: int = Field(0, description="Seed of the masked positions (the same positions for every checkpoint).")
    max_sequences: int | None = Field(None, ge=1, description="Sequences per split, in shard order (None: all).")
    pseudo_max_sequences: int = Field(
        0, ge=0, description="Sequences per split scored by pseudo-perplexity (every position masked in turn; "
                             "L forward passes each). 0 turns it off.")


class DmsFileConfig(StrictModel):
    path: str = Field(..., description="CSV/TSV of substitutions (ProteinGym layout by default).")
    name: str | None = Field(None, description="Assay name in reports (default: file name without extension).")
    mutant_column: str = Field("mutant", description="Mutations like A24G or A24G:L30P (1-based, ':'-joined).")
    score_column: str = Field("DMS_score", description="Measured fitness; higher is fitter.")
    binary_column: str | None = Field(
        "DMS_score_bin", description="0/1 labels for ROC AUC; used when the column exists (None: never).")
    sequence_column: str | None = Field(
        "mutated_sequence", description="Full mutated sequence per row; the wild type is derived from it and checked.")
    wild_type: str | None = Field(
        None, description="Wild-type sequence (instead of, or checked against, the derived one).")
    wild_type_column: str | None = Field(None, description="Column holding the wild-type sequence on every row.")
    offset: int = Field(0, description="Residue number of the first wild-type residue minus one: mutant A124G "
                                       "with offset 100 names residue 24 of the sequence.")
    delimiter: str | None = Field(None, description="Field separator (None: tab for .tsv, else comma).")
    threedi: str | None = Field(None, description="3Di string of the wild type (SaProt; '#' where pLDDT < 70).")
    structure: str | None = Field(None, description="Structure of the wild type, for its 3Di string (SaProt).")
    chain: str | None = Field(None, description="Chain of `structure` (None: first chain).")


class DmsConfig(StrictModel):
    enabled: bool = Field(True, description="Score the DMS assays listed in `files`.")
    files: list[DmsFileConfig] = Field(default_factory=list, description="Assays to score.")
    method: Literal["masked_marginal", "wt_marginal"] = Field(
        "masked_marginal", description="masked_marginal: mask each mutated position (ESM-1v); "
                                       "wt_marginal: one forward pass on the unmasked wild type.")
    on_bad_row: Literal["raise", "skip"] = Field(
        "raise", description="A malformed or inconsistent row raises, or is skipped and counted with its reason.")


class ContactsConfig(StrictModel):
    enabled: bool = Field(True, description="Fit and evaluate the attention-map contact regression.")
    test_structures: list[str] = Field(
        default_factory=list, description="PDB/mmCIF paths or globs; append ':CHAIN' for a chain other than the first.")
    train_structures: list[str] | int = Field(
        20, description="Paths/globs of the regression's training structures, or N: the first N of "
                        "test_structures (sorted) train and the rest are held out.")
    min_separation: int = Field(6, ge=1, description="Smallest |i - j| counted (the short range starts at 6).")
    cutoff: float = Field(8.0, gt=0, description="C-beta (C-alpha for Gly) distance below which residues touch (A).")
    l1_c: float = Field(0.15, gt=0, description="Inverse L1 strength, scikit-learn style (loss sum x C + |w|_1).")
    max_train_pairs: int = Field(200_000, ge=100, description="Residue pairs sampled for the regression (memory cap).")
    seed: int = Field(0, description="Seed of the pair subsample.")


class EvaluateConfig(StrictModel):
    enabled: bool = Field(False, description="Run the evaluate stage.")
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass.")
    window_size: int = Field(1022, ge=8, description="Residues the model sees at once (1022 + <cls>/<eos> = 1024); "
                                                     "longer sequences use a window around each position.")
    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig, description="Held-out perplexity.")
    dms: DmsConfig = Field(default_factory=DmsConfig, description="Zero-shot variant effects.")
    contacts: ContactsConfig = Field(default_factory=ContactsConfig, description="Unsupervised contacts.")

    @model_validator(mode="after")
    def _contacts_split(self) -> EvaluateConfig:
        c = self.contacts
        if isinstance(c.train_structures, int) and c.train_structures < 1:
            raise ValueError("contacts.train_structures must be >= 1 or a list of paths")
        return self
