"""Definitions: plan actions, schema changes make versions, metadata updates in place, entity keys are fixed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlbox.errors import Conflict
from mlbox.features.definitions import Definitions, Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

from .conftest import column, files_under

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"}, description="a customer")
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def prof(fields: tuple[Field, ...] = (Field("x", "int64"),), **kw: object) -> FeatureView:
    return FeatureView("prof", "customer", "ts", fields, ttl=kw.pop("ttl", "30d"), **kw)  # type: ignore[arg-type]


def actions(changes: list) -> dict[tuple[str, str], str]:
    return {(c.kind, c.name): c.action for c in changes}


def test_plan_create_unchanged_update_new_version(fs: FeatureStore) -> None:
    defs = Definitions((CUSTOMER,), (prof(),))
    assert actions(fs.plan(defs)) == {("entity", "customer"): "create", ("view", "prof"): "create"}
    assert fs.catalog.versions() == []  # plan writes nothing
    fs.apply(defs)
    assert actions(fs.plan(defs)) == {("entity", "customer"): "unchanged", ("view", "prof"): "unchanged"}
    assert actions(fs.apply(defs)) == {("entity", "customer"): "unchanged", ("view", "prof"): "unchanged"}

    meta = Definitions((Entity("customer", {"customer_id": "int64"}, "new words"),), (prof(description="d", ttl="7d", owner="me"),))
    changes = fs.plan(meta)
    assert actions(changes) == {("entity", "customer"): "update", ("view", "prof"): "update"}
    detail = next(c.detail for c in changes if c.kind == "view")
    assert "description" in detail and "ttl" in detail and "owner" in detail

    schema = Definitions((CUSTOMER,), (prof((Field("x", "int64"), Field("y", "string"))),))
    change = next(c for c in fs.plan(schema) if c.kind == "view")
    assert change.action == "new-version" and "version 2" in change.detail and "+y" in change.detail

    dtype = Definitions((CUSTOMER,), (prof((Field("x", "float64"),)),))
    change = next(c for c in fs.plan(dtype) if c.kind == "view")
    assert change.action == "new-version" and "x: int64→float64" in change.detail

    transformed = Definitions((CUSTOMER,), (prof(transformation="SELECT customer_id, ts, x FROM source"),))
    assert next(c for c in fs.plan(transformed) if c.kind == "view").action == "new-version"
    # whitespace-only differences in a transformation do not make a version
    fs.apply(transformed)
    spaced = Definitions((CUSTOMER,), (prof(transformation="SELECT customer_id,   ts, x\n  FROM source"),))
    assert next(c for c in fs.plan(spaced) if c.kind == "view").action != "new-version"

    fs.apply(Definitions((CUSTOMER,), ()))
    assert ("view", "prof") in {(c.kind, c.name) for c in fs.plan(Definitions((CUSTOMER,), ())) if c.action == "not-in-file"}


def test_schema_change_makes_version_2_and_version_1_stays_readable(fs: FeatureStore, box) -> None:  # type: ignore[no-untyped-def]
    fs.apply([CUSTOMER, prof()])
    fs.ingest("prof", pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "x": [10, 20]}))
    changes = fs.apply([CUSTOMER, prof((Field("x", "int64"), Field("y", "string")))])
    assert actions(changes)[("view", "prof")] == "new-version"
    assert [v.version for v in fs.catalog.versions("prof")] == [1, 2]
    fs.ingest("prof", pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [100], "y": ["a"]}))

    # each version keeps its own batches, on disk and in the catalog
    assert len(fs.catalog.batches("prof", 1)) == 1 and len(fs.catalog.batches("prof", 2)) == 1
    files = files_under(box.paths.features)
    assert {f.split("/")[1] for f in files} == {"v1", "v2"}

    labels = pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0]})
    old = fs.training_set(labels, ["prof@1:x"], timestamp="ts")
    assert old.features == ["prof@1:x"] and column(old.frame, "x") == [10, 20]
    new = fs.training_set(labels, ["prof:*"], timestamp="ts")
    assert new.features == ["prof@2:x", "prof@2:y"]
    assert column(new.frame, "x") == [100, None] and column(new.frame, "y") == ["a", None]

    cols, rows = fs.sql("SELECT customer_id, x FROM prof_v1 ORDER BY customer_id")
    assert cols == ["customer_id", "x"] and rows == [(1, 10), (2, 20)]
    _, rows = fs.sql("SELECT customer_id, x, y FROM prof ORDER BY customer_id")
    assert rows == [(1, 100, "a")]
    _, rows = fs.sql("SELECT count(*) FROM prof_v2")
    assert rows == [(1,)]
    assert fs.view("prof@1").version == 1 and fs.view("prof").version == 2
    assert fs.show("prof@1")["view"] == "prof@1"


def test_metadata_change_updates_in_place(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, prof(description="old")])
    fs.ingest("prof", pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [10]}))
    h = fs.view("prof").definition_hash
    changes = fs.apply([CUSTOMER, prof(description="new", tags={"team": "crm"})])
    assert actions(changes)[("view", "prof")] == "update"
    assert [v.version for v in fs.catalog.versions("prof")] == [1]
    info = fs.show("prof")
    assert info["description"] == "new" and info["tags"] == {"team": "crm"} and info["definition_hash"] == h
    assert len(info["batches"]) == 1
    assert actions(fs.apply([CUSTOMER, prof(description="new", tags={"team": "crm"})]))[("view", "prof")] == "unchanged"


def test_changing_entity_join_keys_is_a_conflict_and_changes_nothing(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, prof()])
    before = (fs.snapshot(), fs.catalog.entities(), fs.catalog.versions())
    for keys in ({"customer_id": "string"}, {"customer_id": "int64", "region": "string"}, {"cid": "int64"}):
        with pytest.raises(Conflict, match="join keys"):
            fs.apply([Entity("customer", keys), prof(description="would be an update")])
        with pytest.raises(Conflict):
            fs.plan(Definitions((Entity("customer", keys),), ()))
    assert (fs.snapshot(), fs.catalog.entities(), fs.catalog.versions()) == before


@pytest.mark.parametrize("template", ["tabular-classification", "regression"])
def test_template_feature_file_round_trips_as_unchanged(fs: FeatureStore, tmp_path: Path, template: str) -> None:
    """A stored definition must compare equal to the file it came from, or every apply would 'update'."""
    shutil.copy(TEMPLATES / template / "features.yaml", tmp_path / "features.yaml")
    defs = fs.load(tmp_path / "features.yaml")
    created = fs.apply(defs)
    assert {c.action for c in created} == {"create"}
    assert {c.action for c in fs.apply(fs.load(tmp_path / "features.yaml"))} == {"unchanged"}


def test_same_field_from_two_versions_gets_distinct_named_columns(fs: FeatureStore) -> None:
    """`prof@1:x` and `prof@2:x` in one training set: two columns, and `columns` must say which is which."""
    fs.apply([CUSTOMER, prof()])
    fs.ingest("prof", pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "x": [10, 20]}))
    fs.apply([CUSTOMER, prof((Field("x", "int64"), Field("y", "string")))])
    fs.ingest("prof", pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [100], "y": ["a"]}))
    labels = pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0]})
    ts = fs.training_set(labels, ["prof@1:x", "prof:x", "prof:y"], timestamp="ts")
    assert ts.features == ["prof@1:x", "prof@2:x", "prof@2:y"]
    assert ts.views == ["prof@1", "prof@2"]
    frame_cols = list(ts.frame.columns)
    assert len(set(frame_cols)) == len(frame_cols)
    # every requested feature has its own output column, named in `columns`, holding that version's values
    assert len(ts.columns) == 3, f"columns mapping lost a feature: {ts.columns} (frame has {frame_cols})"
    assert set(ts.columns) <= set(frame_cols)
    by_ref = {ref: column(ts.frame, out) for out, ref in ts.columns.items()}
    assert by_ref == {"prof@1:x": [10, 20], "prof@2:x": [100, None], "prof@2:y": ["a", None]}


def test_apply_is_all_or_nothing(fs: FeatureStore) -> None:
    from mlbox.errors import UsageError

    fs.apply([CUSTOMER, prof()])
    snap = fs.snapshot()
    orphan = FeatureView("orphan", "ghost", "ts", (Field("x", "int64"),))
    with pytest.raises(Exception) as info:
        fs.apply([CUSTOMER, Entity("shop", {"shop_id": "int64"}), prof(description="changed"), orphan])
    assert [e.name for e in fs.catalog.entities()] == ["customer"]
    assert fs.show("prof")["description"] == "" and [v.name for v in fs.catalog.versions()] == ["prof"]
    assert fs.snapshot() == snap
    # a view naming an undeclared entity is the user's mistake: a UsageError naming it, from apply and from plan
    assert isinstance(info.value, UsageError) and "ghost" in str(info.value), repr(info.value)
    with pytest.raises(UsageError, match="ghost"):
        fs.plan(Definitions((CUSTOMER,), (orphan,)))
    with pytest.raises(UsageError, match="twice"):
        Definitions((CUSTOMER, CUSTOMER), ())


def test_view_columns_must_not_collide_with_entity_keys(fs: FeatureStore) -> None:
    """A field (or the timestamp) named like a join key would be stored twice; refuse it when defined."""
    from mlbox.errors import UsageError

    fs.apply([CUSTOMER])
    for bad in (
        FeatureView("p", "customer", "ts", (Field("customer_id", "int64"), Field("x", "int64"))),
        FeatureView("p", "customer", "customer_id", (Field("x", "int64"),)),
    ):
        with pytest.raises(UsageError, match="customer_id"):
            fs.apply([CUSTOMER, bad])
        assert fs.catalog.versions() == []
