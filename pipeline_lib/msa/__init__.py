"""msa stage: MMseqs2 MSAs (ColabFold recipe) -> parsed, filtered, subsampled, tokenized MSA shards.

Modules (imported explicitly; this package imports nothing so that loading the config stays cheap):

- ``config``    ``MsaConfig`` (section ``msa``) with ColabFold defaults and MSA Transformer budgets
- ``commands``  ``TargetDb``, ``msa_commands`` / ``target_commands``: the mmseqs argv chain (pure)
- ``build``     ``prepare_target``, ``build_msa_batch``, ``build_msas``, ``iter_query_batches``, ``read_queries``
- ``a3m``       ``Msa``, ``parse_a3m``, ``read_a3m``, ``import_alignment`` (A3M/A2M/Stockholm), Neff
- ``store``     ``MSA_SCHEMA``, ``write_msa_parquet``, ``read_msa_parquet``
- ``subsample`` ``subsample_msa``, ``greedy_select``, ``random_select``, ``filter_rows``
- ``tokens``    ``MSA_SHARD_SCHEMA``, ``tokenize_msa``, ``write_msa_shards``, ``read_msa_tokens``
"""
