"""Right of access: `mlbox privacy export` gives every stored value about one subject as portable JSON, audited."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from mlbox.privacy.access import FORMAT
from mlbox.privacy.erase import erase

from ..conftest import OS_USER
from ._subject import EMAIL, KEY, build, open_box


def test_export_holds_every_store_about_the_subject_and_is_audited_without_values(tmp_path: Path, cli: Any) -> None:
    home = tmp_path / "box"
    info = build(home, tmp_path / "backup")
    out = tmp_path / "subject.json"
    result = cli("--home", str(home), "--json", "privacy", "export", "--entity", f"customer_id={KEY}", "--out", str(out))
    assert result.exit_code == 0, result.exception
    assert result.json() == {"path": str(out), "feature_rows": 2, "online_rows": 2, "predictions": 2, "labels": 2,
                             "training_sets": 1, "models": 1}  # fmt: skip
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # personal data: the owner's only
    doc = json.loads(out.read_text())
    assert doc["format"] == FORMAT and doc["subject"] == {"customer_id": KEY}
    profile = next(v for v in doc["features"] if v["view"] == "customer_profile@1")
    row = profile["rows"][0]
    assert row["email"] == EMAIL and row["age"] == 41 and row["plan"] == "premium"  # protected fields unmasked: theirs
    assert row["updated_at"].startswith("20") and isinstance(row["__batch"], int)  # the event time, ISO-8601
    usage = next(v for v in doc["features"] if v["view"] == "usage@1")
    assert usage["rows"][0]["calls"] == 12
    online = {v["view"]: v["rows"] for v in doc["online"]}
    assert online["customer_profile@1"][0]["email"] == EMAIL and online["usage@1"][0]["data_gb"] == 3.5
    assert sorted(p["request_id"] for p in doc["predictions"]) == ["req-0", "req-1"]
    shared = next(p for p in doc["predictions"] if p["request_id"] == "req-1")
    assert shared["entity"][1] == {"customer_id": KEY} and isinstance(shared["inputs"], list)  # parsed JSON, not text
    assert sorted(lbl["request_id"] for lbl in doc["labels"]) == ["req-0", "req-1"]
    assert [m["model"] for m in doc["models"]] == [info["model"]] and doc["erasures"] == []
    with open_box(home) as box:
        entry = box.audit.entries(limit=1)[0]
        assert entry.action == "privacy.export" and entry.details["feature_rows"] == 2
        assert str(KEY) not in json.dumps(entry.as_dict()) and EMAIL not in json.dumps(entry.as_dict())
        erase(box, {"customer_id": str(KEY)}, actor=OS_USER)
    # after erasure the subject's export is empty but says they were erased
    again = cli("--home", str(home), "--json", "privacy", "export", "--entity", f"customer_id={KEY}", "--out", str(out))
    assert again.exit_code == 0, again.exception
    doc = json.loads(out.read_text())
    assert doc["features"] == doc["online"] == doc["predictions"] == doc["labels"] == [] and len(doc["erasures"]) == 1
