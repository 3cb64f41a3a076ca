"""msa stage."""
