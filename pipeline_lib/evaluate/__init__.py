"""evaluate stage: held-out perplexity, zero-shot variant effects on DMS assays, unsupervised contacts.

Modules (importing this package imports nothing heavy; import the modules you need):
- ``model``: the :class:`~pipeline_lib.evaluate.model.MaskedLM` protocol and adapters (Hugging Face, torch).
- ``perplexity``: masked-token perplexity over Parquet shards, pseudo-perplexity.
- ``dms``: ProteinGym-style substitution files, read and checked.
- ``variants``: masked-marginal / wild-type-marginal scores, Spearman, ROC AUC.
- ``contacts``: attention-map contact regression, precision at L, L/2, L/5 by range.
- ``report``: metric rows, metrics table, checkpoint comparison table.

    .venv/bin/python -m pytest -q tests/test_evaluate*.py
"""
