"""The filter grammar as plain values: free text, negation, equality, numeric comparison, quoting, errors."""

from __future__ import annotations

import pytest

from mlbox.errors import UsageError
from mlbox.tui.filters import Term, parse

ROWS: list[dict[str, object]] = [
    {"name": "churn_api", "status": "running", "auc": 0.93, "gpus": 2, "owner": "ana"},
    {"name": "fraud_api", "status": "failed", "auc": 0.88, "gpus": 0, "owner": "raj"},
    {"name": "reco", "status": "queued", "auc": None, "gpus": 1, "owner": "Ana Maria"},
]
COLUMNS = ["name", "status", "auc", "gpus", "owner"]


def names(text: str) -> list[str]:
    return [str(r["name"]) for r in parse(text, COLUMNS).apply(ROWS)]


def test_free_text_matches_any_cell_case_insensitively() -> None:
    assert names("/API") == ["churn_api", "fraud_api"]
    assert names("ana") == ["churn_api", "reco"]  # the leading / is optional


def test_negated_text_excludes() -> None:
    assert names("/!api") == ["reco"]


def test_key_equality_and_inequality() -> None:
    assert names("/status=FAILED") == ["fraud_api"]
    assert names("/status!=failed") == ["churn_api", "reco"]


def test_numeric_comparisons_skip_missing_values() -> None:
    assert names("/auc>0.9") == ["churn_api"]
    assert names("/auc<=0.9") == ["fraud_api"]  # reco's auc is missing: no comparison holds
    assert names("/gpus>=1") == ["churn_api", "reco"]


def test_terms_are_anded() -> None:
    assert names("/auc>0.8 gpus=0") == ["fraud_api"]
    assert names("/api !fraud") == ["churn_api"]


def test_quoted_text_is_free_text_even_with_operators_or_spaces() -> None:
    assert names("/'ana maria'") == ["reco"]
    assert parse('/"a=b"').terms == (Term(None, "~", "a=b"),)


def test_empty_filter_matches_everything() -> None:
    f = parse("/")
    assert not f
    assert names("/") == ["churn_api", "fraud_api", "reco"]


@pytest.mark.parametrize(
    ("text", "mentions"),
    [("/color=red", "no column 'color'"), ("/auc>high", "compares numbers"), ("/'open", "bad filter")],
)
def test_bad_filters_raise_usage_errors(text: str, mentions: str) -> None:
    with pytest.raises(UsageError, match=mentions):
        parse(text, COLUMNS)


def test_percent_cells_compare_as_numbers() -> None:
    assert parse("/weight>50").apply([{"weight": "75%"}, {"weight": "25%"}]) == [{"weight": "75%"}]
