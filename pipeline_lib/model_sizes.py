"""Named model sizes ("flavors", as in torchtitan) as plain data, without torch, so that a config naming a size
can be checked when it is loaded (``plm config``, the start of ``plm run``) and not only when training starts.

    from pipeline_lib.model_sizes import FLAVORS, MSA_FLAVORS
    FLAVORS["650M"]      # (num_layers, hidden_size, num_heads) = (33, 1280, 20)

:mod:`pipeline_lib.models` builds the networks from these tables.
"""
from __future__ import annotations

__all__ = ["FLAVORS", "MSA_FLAVORS"]

# ESM-2 and SaProt, the ESM-2 paper's sizes; "tiny" is for tests on CPU. name -> (num_layers, hidden_size, num_heads)
FLAVORS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 64, 4),
    "8M": (6, 320, 20),
    "35M": (12, 480, 20),
    "150M": (30, 640, 20),
    "650M": (33, 1280, 20),
    "3B": (36, 2560, 40),
    "15B": (48, 5120, 40),
}

# MSA Transformer; 100M is ESM-MSA-1b
MSA_FLAVORS: dict[str, tuple[int, int, int]] = {"tiny": (2, 64, 4), "100M": (12, 768, 12)}
