"""The sequence data path, one module per stage: FASTA reading (``fasta``, ``fasta_headers``), ``ingest`` (with
``ingest_dedupe``), ``cluster`` (MMseqs2 levels), ``split`` (by cluster, decontamination) and ``shards`` (token
shards, written by ``shard_writer``); their config sections are in ``config``. Importing the package is cheap."""
