"""Snapshots pin training sets: same labels + same snapshot → same frame and fingerprint, whatever came later."""

from __future__ import annotations

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from mlbox.errors import UsageError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

from .conftest import column

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})


def view(*fields: Field, description: str = "") -> FeatureView:
    return FeatureView("prof", "customer", "ts", fields or (Field("x", "int64"),), ttl="30d", description=description)


def rows(ids: list[int], ts: pd.Timestamp, xs: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": ids, "ts": [ts] * len(ids), "x": xs})


LABELS = pd.DataFrame({"customer_id": [1, 2, 3, 1], "ts": [T0 + pd.Timedelta(days=d) for d in (1, 1, 1, 5)], "y": [0, 1, 0, 1]})


def test_same_snapshot_same_frame_and_fingerprint_after_later_ingest(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, view()])
    fs.ingest("prof", rows([1, 2], T0, [10, 20]))
    snap = fs.snapshot()
    first = fs.training_set(LABELS, ["prof:x"], snapshot=snap, timestamp="ts")
    assert column(first.frame, "x") == [10, 20, None, 10]

    # later data that would change every row: a newer value for 1 and 2, a first value for 3, and a tie
    fs.ingest("prof", rows([1, 2, 3], T0 + pd.Timedelta(hours=1), [11, 21, 31]))
    fs.ingest("prof", rows([1], T0, [99]))
    again = fs.training_set(LABELS, ["prof:x"], snapshot=snap, timestamp="ts")
    assert_frame_equal(again.frame, first.frame)
    assert again.fingerprint == first.fingerprint
    assert again.batches == first.batches and again.snapshot == snap

    now = fs.training_set(LABELS, ["prof:x"], timestamp="ts")
    assert column(now.frame, "x") == [11, 21, 31, 11]
    assert now.fingerprint != first.fingerprint
    assert now.snapshot == fs.snapshot() > snap
    assert len(now.batches) == 3

    # the fingerprint also depends on the labels
    other = fs.training_set(LABELS.iloc[::-1].reset_index(drop=True), ["prof:x"], snapshot=snap, timestamp="ts")
    assert other.fingerprint != first.fingerprint


def test_unpinned_training_set_sees_the_next_ingest(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, view()])
    fs.ingest("prof", rows([1], T0, [10]))
    a = fs.training_set(LABELS, ["prof:x"], timestamp="ts")
    fs.ingest("prof", rows([3], T0, [30]))
    b = fs.training_set(LABELS, ["prof:x"], timestamp="ts")
    assert column(a.frame, "x")[2] is None and column(b.frame, "x")[2] == 30
    assert a.fingerprint != b.fingerprint


def test_old_snapshot_still_resolves_version_1_after_a_new_version(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, view()])
    fs.ingest("prof", rows([1, 2], T0, [10, 20]))
    snap = fs.snapshot()
    before = fs.training_set(LABELS, ["prof:x"], snapshot=snap, timestamp="ts")

    changes = fs.apply([CUSTOMER, view(Field("x", "int64"), Field("extra", "float64"))])
    assert [c.action for c in changes if c.kind == "view"] == ["new-version"]
    fs.ingest("prof", pd.DataFrame({"customer_id": [1, 2, 3], "ts": [T0] * 3, "x": [7, 8, 9], "extra": [0.5, 1.5, 2.5]}))

    pinned = fs.training_set(LABELS, ["prof:x"], snapshot=snap, timestamp="ts")
    assert pinned.features == ["prof@1:x"]
    assert_frame_equal(pinned.frame, before.frame)
    assert pinned.fingerprint == before.fingerprint
    with pytest.raises(Exception, match="extra"):
        fs.training_set(LABELS, ["prof:extra"], snapshot=snap, timestamp="ts")  # v1 has no such field

    latest = fs.training_set(LABELS, ["prof:x", "prof:extra"], timestamp="ts")
    assert latest.features == ["prof@2:x", "prof@2:extra"]
    assert column(latest.frame, "x") == [7, 8, 9, 7]


def test_snapshot_from_the_future_is_refused(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, view()])
    fs.ingest("prof", rows([1], T0, [10]))
    with pytest.raises(UsageError, match="snapshot"):
        fs.training_set(LABELS, ["prof:x"], snapshot=fs.snapshot() + 1, timestamp="ts")


def test_view_created_after_the_snapshot_is_not_visible(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER])
    snap = fs.snapshot()
    fs.apply([CUSTOMER, view()])
    fs.ingest("prof", rows([1], T0, [10]))
    with pytest.raises(Exception, match="did not exist yet at snapshot"):
        fs.training_set(LABELS, ["prof:x"], snapshot=snap, timestamp="ts")


def test_ttl_change_does_not_change_a_pinned_training_set(fs: FeatureStore) -> None:
    """TTL is metadata updated in place, but a read pinned to a snapshot uses the TTL of that snapshot."""
    fs.apply([CUSTOMER, view()])
    fs.ingest("prof", rows([1, 2], T0, [10, 20]))
    labels = pd.DataFrame({"customer_id": [1], "ts": [T0 + pd.Timedelta(days=10)]})
    snap = fs.snapshot()
    before = fs.training_set(labels, ["prof:x"], snapshot=snap, timestamp="ts")
    assert column(before.frame, "x") == [10]
    fs.apply([CUSTOMER, FeatureView("prof", "customer", "ts", (Field("x", "int64"),), ttl="1d")])
    now = fs.training_set(labels, ["prof:x"], timestamp="ts")
    assert column(now.frame, "x") == [None]  # the new 1-day TTL applies to unpinned reads
    pinned = fs.training_set(labels, ["prof:x"], snapshot=snap, timestamp="ts")
    assert column(pinned.frame, "x") == [10] and pinned.fingerprint == before.fingerprint
