"""The digits reproduction of the gradient paper's protocol (tools/gradient_uncertainty_digits.py)."""

import math

import pytest

from tests.fixtures import load_tool

tool = load_tool("gradient_uncertainty_digits")


@pytest.fixture(scope="module")
def quick_run():
    return tool.main(["--quick"])  # one seed, ~5 s


def cells(table):
    for row, columns in table.items():
        for column, measures in columns.items():
            for measure, summary in measures.items():
                yield (row, column, measure), summary


def test_tables_hold_finite_scores_in_unit_interval(quick_run):
    result = quick_run
    assert set(result["table1"]) == set(tool.SINGLE_METRICS)
    assert set(result["table2"]) == {"Softmax baseline", "Entropy", *tool.TABLE2_ROWS}
    assert set(result["table3"]) == set(tool.TABLE3_ROWS)
    for name in ("table1", "table2", "table3"):
        for key, summary in cells(result[name]):
            assert len(summary["values"]) == 1 and summary["std"] == 0.0, (name, key)
            assert math.isfinite(summary["mean"]) and 0.0 <= summary["mean"] <= 1.0, (name, key)
    assert 0.9 < result["accuracy"]["mean"] <= 1.0  # the CNN learned the digits
    assert result["closed_form_gap"] < 1e-8  # closed form == autograd for the dense layer
    assert all(isinstance(f["holds"], bool) and f["detail"] for f in result["findings"])


def test_meta_classification_beats_chance_for_correct_vs_wrong(quick_run):
    result = quick_run
    for table, rows in (
        ("table1", ("Entropy", "Euclidean norm", "Minimum")),
        ("table2", ("LASSO", "Ridge", "Elastic net")),
    ):
        for row in rows:
            assert result[table][row]["Dc/Dw"]["AUROC"]["mean"] > 0.5, (table, row)
    for column in ("NN val", "NN val+U", "LASSO val"):
        assert result["table3"]["Dw"][column]["AUROC"]["mean"] > 0.5, column
