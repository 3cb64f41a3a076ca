"""Protein language models as plain ``nn.Module``s: ESM-2 / SaProt and the MSA Transformer.

    from pipeline_lib.models import ESM2, model_config
    model = ESM2(model_config("8M", vocab="esm2"))

Distribution, compilation and activation checkpointing are applied from outside
(:mod:`pipeline_lib.train.parallel`); Hugging Face interop is in :mod:`pipeline_lib.models.hf`.
"""
from pipeline_lib.models.esm2 import ESM2, ESM2Config, flops_per_token
from pipeline_lib.models.flavors import FLAVORS, VOCABS, alphabet_for, model_config
from pipeline_lib.models.msa import MSA_FLAVORS, MSAConfig, MSATransformer, msa_config

__all__ = ["ESM2", "ESM2Config", "flops_per_token", "FLAVORS", "VOCABS", "alphabet_for", "model_config",
           "MSAConfig", "MSATransformer", "MSA_FLAVORS", "msa_config"]
