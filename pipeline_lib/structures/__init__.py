"""structures stage: structure files -> per-chain 3Di strings -> pLDDT-masked SaProt token rows.

Modules (imported one by one so that reading the config does not load gemmi or mini3di):

- :mod:`~pipeline_lib.structures.parse`: PDB/mmCIF(.gz) -> :class:`Chain` (Foldseek's residue selection).
- :mod:`~pipeline_lib.structures.threedi`: ``encode_structures(inputs, backend="auto"|"foldseek"|"mini3di")``.
- :mod:`~pipeline_lib.structures.saprot`: masking, joins to sequences, ``structure_shard_schema`` rows.
- :mod:`~pipeline_lib.structures.sources`: directory, tar archive, AlphaFold DB API, Foldcomp.
- :mod:`~pipeline_lib.structures.config`: the ``structures`` config section.

Tests: ``.venv/bin/pytest -q tests/test_threedi.py tests/test_structures*.py``.
"""
