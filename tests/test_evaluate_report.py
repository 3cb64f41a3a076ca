"""Metric rows, the metrics table, the checkpoint comparison, the evaluate config section, no Prefect."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from pipeline_lib.config import load_config
from pipeline_lib.errors import ConfigError
from pipeline_lib.evaluate.config import EvaluateConfig
from pipeline_lib.evaluate.contacts import ContactResult
from pipeline_lib.evaluate.perplexity import PerplexityResult
from pipeline_lib.evaluate.report import METRICS_SCHEMA, MetricRow, collect_rows, render_comparison, rows_to_table
from pipeline_lib.evaluate.variants import AssayResult


def results(shift: float = 0.0):
    ppl = [PerplexityResult("valid", "perplexity", nll_sum=200.0 + shift, n_tokens=100, n_sequences=10)]
    dms = [AssayResult("A", "masked_marginal", 50, 2, 0.4 + shift, 0.7, np.zeros(50)),
           AssayResult("B", "masked_marginal", 30, 0, 0.2 + shift, None, np.zeros(30))]
    contacts = ContactResult(mean={"long": {"L": 0.1, "L/2": 0.2, "L/5": 0.3}}, n_train=1, n_test=4)
    return collect_rows(perplexity=ppl, dms=dms, contacts=contacts)


def test_rows_and_table():
    rows = results()
    by_key = {(r.metric, r.subset): r for r in rows}
    assert by_key[("perplexity", "valid")].value == pytest.approx(math.exp(2.0))
    assert by_key[("perplexity", "valid")].n == 100
    assert by_key[("dms_spearman", "mean")] == MetricRow("dms_spearman", "mean", pytest.approx(0.3), 2)
    assert by_key[("dms_auc", "mean")].n == 1 and ("dms_auc", "B") not in by_key
    assert by_key[("dms_skipped_rows", "A")].value == 2.0
    assert by_key[("contact_precision@L/5", "long")] == MetricRow("contact_precision@L/5", "long", 0.3, 4)
    table = rows_to_table(rows, checkpoint="step-100")
    assert table.schema == METRICS_SCHEMA and table.num_rows == len(rows)
    assert set(table.column("checkpoint").to_pylist()) == {"step-100"}


def test_render_comparison():
    a, b = results(), results(0.5)[:-1]                        # b lacks the last contact metric
    text = render_comparison({"step-1": a, "step-2": b}, digits=2)
    lines = text.splitlines()
    assert lines[0].split("|")[1:-1] == [" metric                ", " subset ", " step-1 ", " step-2 "]
    assert len({len(line) for line in lines}) == 1             # aligned columns
    row = next(line for line in lines if "dms_spearman" in line and "| A " in line)
    assert row.split("|")[3].strip() == "0.40" and row.split("|")[4].strip() == "0.90"
    assert lines[-1].split("|")[4].strip() == "-"


def test_evaluate_config_section():
    cfg = load_config(overrides=["evaluate.enabled=true", "evaluate.dms.files=[{path: a.csv, offset: 3}]",
                                 "evaluate.contacts.train_structures=5", "evaluate.perplexity.splits=[valid]"])
    ev = cfg.evaluate
    assert isinstance(ev, EvaluateConfig) and ev.enabled and ev.dms.files[0].offset == 3
    assert ev.dms.files[0].mutant_column == "mutant" and ev.dms.method == "masked_marginal"
    assert ev.contacts.train_structures == 5 and ev.window_size == 1022
    with pytest.raises(ConfigError, match="evaluate.dms.method"):
        load_config(overrides=["evaluate.dms.method=sum"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(overrides=["evaluate.dms.files=[{path: a.csv, mutant_col: x}]"])


def test_evaluate_modules_do_not_import_prefect():
    code = ("import sys; import pipeline_lib.evaluate.perplexity, pipeline_lib.evaluate.variants, "
            "pipeline_lib.evaluate.contacts, pipeline_lib.evaluate.report; "
            "assert 'prefect' not in sys.modules, 'prefect imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
