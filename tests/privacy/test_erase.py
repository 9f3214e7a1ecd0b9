"""Right to erasure: one subject leaves every store of a real box, byte for byte, with a signed certificate.

The box is templates/tabular-classification with a planted subject (tests/privacy/_subject.py):
unique email and a customer id above 2^47, in feature batches, online.db, the prediction log,
label batches, the project's data files and a training-set file. Before erasure the byte scan
finds them (the scanner works); after it, no byte of any file under the box holds them (SQLite
pages, WAL and free pages included: erasure vacuums and truncates the WAL; Parquet also decoded,
since compression could hide a value), and no read path returns them. The same box built encrypted
holds the subject only in ciphertext (a scan of the raw bytes finds them in the project's own plain
files alone), and after erasure not even the decrypted bytes hold them: every Parquet and sealed file
decrypted with the box's keyring, and every page and WAL frame of its SQLCipher databases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlbox.errors import UsageError, ValidationError
from mlbox.monitor.logread import log_files
from mlbox.privacy import certificate
from mlbox.privacy.access import collect, export
from mlbox.privacy.erase import erase, parse_entity
from mlbox.store import crypt, keyring
from mlbox.store.sqlite import Database

from ..conftest import OS_USER, REPO
from ._subject import EMAIL, KEY, OTHER, build, open_box, scan, sqlcipher_plaintext

VERIFY = REPO / "docs" / "tools" / "verify_certificate.py"
SUBJECT = {"customer_id": str(KEY)}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    home = tmp_path / "box"
    return home, build(home, tmp_path / "backup")


def _verify(path: Path, fingerprint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(VERIFY), str(path), "--public-key-fingerprint", fingerprint],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def _sqlite_state(home: Path) -> tuple[int, int, int, int]:
    with open_box(home) as box:
        fs = box.features
        return (fs.snapshot(), box.db.scalar("SELECT count(*) FROM audit"),
                box.db.scalar("SELECT count(*) FROM prediction_batches"), sum(fs.online.count(v) for v in fs.catalog.versions()))  # fmt: skip


def test_dry_run_reports_every_store_and_changes_nothing(planted: tuple[Path, dict[str, Any]]) -> None:
    home, info = planted
    files = {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and ".db" not in p.name}
    before = _sqlite_state(home)
    with open_box(home) as box:
        found = erase(box, SUBJECT, actor=OS_USER, dry_run=True)
    assert "signature" not in found
    payload = found["payload"]
    assert payload["dry_run"] is True
    assert payload["totals"] == {"offline_rows": 2, "online_rows": 2, "prediction_records": 2, "label_rows": 2,
                                 "source_file_rows": 6, "log_lines": 0}  # fmt: skip
    assert {r["view"] for r in payload["removed"]["offline"]} == {"customer_profile@1", "usage@1"}
    assert payload["removed"]["predictions"][0]["other_rows"] == 1  # the request shared with customer OTHER
    assert {r["path"] for r in payload["removed"]["source_files"]} == {
        "data/customers.csv", "data/usage.csv", "data/labels.csv", "training_set.parquet", "served_labels.csv"}  # fmt: skip
    assert [m["model"] for m in payload["models_to_review"]] == [info["model"]]
    assert [b["path"] for b in payload["out_of_reach"]] == [str((home.parent / "backup").resolve())]
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and ".db" not in p.name} == files
    assert _sqlite_state(home) == before
    assert set(scan(home)) >= {"online.db", "data/customers.csv", "training_set.parquet"}  # still all there


def test_erasure_leaves_no_byte_of_the_subject_and_no_read_path_returns_them(planted: tuple[Path, dict[str, Any]]) -> None:
    home, info = planted
    found = scan(home)
    # the scanner sees the subject everywhere before: feature batches, online.db, logs, data files
    assert any(p.startswith("features/customer_profile/") for p in found) and any(p.startswith("predictions/") for p in found)
    assert {"online.db", "data/customers.csv", "data/labels.csv", "training_set.parquet"} <= set(found)
    with open_box(home) as box:
        labels = pd.DataFrame({"customer_id": [KEY, OTHER], "event_ts": [pd.Timestamp.now(tz="UTC")] * 2})
        before = box.features.training_set(labels, ["customer_profile:age"], timestamp="event_ts", protected="raw")
        assert before.frame.sort_values("customer_id")["age"].notna().all()
        document = erase(box, SUBJECT, actor=OS_USER)
        fingerprint = document["payload"]["public_key"]["fingerprint_sha256"]
        stored = box.db.one("SELECT subject, certificate FROM erasures")
        entry = box.audit.entries(limit=1)[0]
    assert scan(home) == {}  # not one byte, in any file under the box
    assert (home / "served_labels.csv").read_text() == "request_id,label\nreq-2,1\nreq-3,1\n"  # the labels file ingested
    payload = document["payload"]
    assert payload["scrubbed"] == {"meta.db": {"vacuumed": True, "wal_truncated": True},
                                   "online.db": {"vacuumed": True, "wal_truncated": True}}  # fmt: skip
    assert payload["snapshot"] > info["snapshot"]
    # the signed certificate, as stored in the box: the pseudonym only, and it verifies without mlbox
    assert stored is not None and stored["subject"] == payload["subject"]["pseudonym"]
    assert str(KEY) not in stored["certificate"] and EMAIL not in stored["certificate"]
    assert certificate.verify(json.loads(stored["certificate"]), fingerprint) == payload
    cert = home.parent / "certificate.json"
    certificate.write(cert, document, SUBJECT)
    ok = _verify(cert, fingerprint)
    assert ok.returncode == 0 and "signature OK" in ok.stdout, ok.stderr
    tampered = json.loads(cert.read_text())
    tampered["payload"]["totals"]["offline_rows"] = 0
    cert.write_text(json.dumps(tampered))
    assert _verify(cert, fingerprint).returncode == 1
    with pytest.raises(ValidationError, match="does not verify"):
        certificate.verify(tampered)
    # one audit entry, no clear values
    assert entry.action == "privacy.erase" and entry.details["offline_rows"] == 2
    assert str(KEY) not in json.dumps(entry.as_dict()) and EMAIL not in json.dumps(entry.as_dict())
    with open_box(home) as box:
        fs = box.features
        for snapshot in (None, info["snapshot"]):  # now, and at a snapshot older than the erasure
            assert fs.sql(f"SELECT count(*) FROM customer_profile WHERE customer_id = {KEY}", snapshot, protected="raw")[1] == [(0,)]
            assert fs.sql(f"SELECT count(*) FROM usage WHERE customer_id = {OTHER}", snapshot, protected="raw")[1][0][0] > 0
            got = fs.training_set(labels, ["customer_profile:age", "usage:calls"], snapshot=snapshot, timestamp="event_ts",
                                  protected="raw").frame.set_index("customer_id")  # fmt: skip
            assert pd.isna(got.loc[KEY, "age"]) and pd.isna(got.loc[KEY, "calls"]) and not pd.isna(got.loc[OTHER, "age"])
        online = fs.get_online_features(["customer_profile:age", "usage:calls"], [{"customer_id": KEY}, {"customer_id": OTHER}])
        assert online["age"][0] is None and online["calls"][0] is None
        assert online["age"][1] is not None
        # what monitoring reads: the deployment's log files; labels keep only other requests
        files = log_files(box.db, box.paths.home, "churn_api", None, None)
        logged = pd.concat([pd.read_parquet(f) for f in files])
        assert sorted(logged["request_id"]) == ["req-2", "req-3"]
        kept = [pd.read_parquet(box.paths.home / r["path"]) for r in box.db.query("SELECT path FROM label_batches")]
        assert sorted(pd.concat(kept)["request_id"]) == ["req-2", "req-3"]
        again = erase(box, SUBJECT, actor=OS_USER)  # idempotent, and the box knows it erased this subject
    assert sum(again["payload"]["totals"].values()) == 0
    assert [e["snapshot"] for e in again["payload"]["previous_erasures"]] == [payload["snapshot"]]


def test_cli_erase_writes_the_clear_certificate_outside_the_box_and_refuses_bad_input(
    planted: tuple[Path, dict[str, Any]], cli: Any
) -> None:
    home, _ = planted
    dry = cli("--home", str(home), "--json", "privacy", "erase", "--entity", f"customer_id={KEY}", "--dry-run")
    assert dry.exit_code == 0, dry.exception
    assert dry.json()["payload"]["totals"]["online_rows"] == 2  # type: ignore[index]
    cert = home.parent / "erasure.json"
    done = cli("--home", str(home), "privacy", "erase", "--entity", f"customer_id={KEY}", "--certificate", str(cert))
    assert done.exit_code == 0, done.exception
    assert "verify with: python3 docs/tools/verify_certificate.py" in done.stdout
    written = json.loads(cert.read_text())
    assert written["subject"] == {"customer_id": str(KEY)}  # the controller's copy names the subject
    assert written["payload"]["subject"]["pseudonym"] == certificate.subject_id((home / "keys" / "audit.key").read_bytes(), {"customer_id": KEY})
    assert _verify(cert, written["payload"]["public_key"]["fingerprint_sha256"]).returncode == 0
    assert scan(home) == {}
    bad = cli("--home", str(home), "privacy", "erase", "--entity", "no_such_key=1")
    assert isinstance(bad.exception, UsageError) and "no entity has the join key" in bad.exception.message
    bad = cli("--home", str(home), "privacy", "erase", "--entity", "customer_id=abc")
    assert isinstance(bad.exception, ValidationError)
    with pytest.raises(UsageError):
        parse_entity(["customer_id"])
    with pytest.raises(UsageError):
        parse_entity(["customer_id=1", "customer_id=2"])


def test_staged_pushes_are_flushed_then_erased_and_a_plain_box_erases_cleanly(box: Any) -> None:
    from mlbox.features.definitions import Entity, FeatureView, Field

    fs = box.features
    fs.apply([Entity("user", {"user_id": "string"}), FeatureView("p", "user", "ts", (Field("mail", "string", pii=True),))])
    now = pd.Timestamp.now(tz="UTC")
    fs.push("p", [{"user_id": "u-1", "ts": now, "mail": "u1@x.example"}, {"user_id": "u-2", "ts": now, "mail": "u2@x.example"}],
            actor=OS_USER)  # fmt: skip
    assert fs.pending_pushes()[0]["rows"] == 2
    log = box.paths.logs / "serve.log"
    log.write_text("started\nrequest from u1@x.example failed\nrequest from u2@x.example ok\n")
    dry = erase(box, {"user_id": "u-1"}, actor=OS_USER, dry_run=True)["payload"]
    assert dry["removed"]["staged_pushes"] == 1 and dry["totals"]["online_rows"] == 1 and fs.pending_pushes()
    done = erase(box, {"user_id": "u-1"}, actor=OS_USER)["payload"]
    assert done["totals"]["offline_rows"] == 1 and done["totals"]["online_rows"] == 1 and not fs.pending_pushes()
    assert fs.sql("SELECT user_id, mail FROM p", protected="raw")[1] == [("u-2", "u2@x.example")]
    assert fs.get_online_features(["p:mail"], [{"user_id": "u-1"}, {"user_id": "u-2"}])["mail"] == [None, "u2@x.example"]
    assert done["models_to_review"] == [] and done["out_of_reach"] == []
    assert dry["removed"]["log_lines"] == done["removed"]["log_lines"] == [{"path": "logs/serve.log", "lines": 1}]
    assert log.read_text() == "started\n[line removed by mlbox privacy erase]\nrequest from u2@x.example ok\n"
    holding = [p.name for p in box.paths.home.rglob("*") if p.is_file() and b"u1@x.example" in p.read_bytes()]
    assert holding == []  # meta.db (the staging table, batch statistics), its WAL, online.db, the batches


# an encrypted box --------------------------------------------------------------------------


@pytest.fixture
def encrypted(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    home = tmp_path / "box"
    yield home, build(home, tmp_path / "backup", encrypt=True)
    keyring.unregister(home)


def test_an_encrypted_box_erases_the_subject_from_every_decrypted_byte(encrypted: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    home, _ = encrypted
    # at rest the stores hold the subject only as ciphertext: the raw bytes show them in the user's own files alone
    # (the project's data, and the training set written where the user asked: mlbox encrypts its stores)
    plain = {"data/customers.csv", "data/usage.csv", "data/labels.csv", "training_set.parquet"}
    assert set(scan(home, decrypt=False)) == plain
    found = scan(home)  # decrypted, the scanner sees them in every store
    assert {"online.db", "training_set.parquet"} <= set(found)
    assert any(p.startswith("features/customer_profile/") for p in found) and any(p.startswith("predictions/") for p in found)
    with open_box(home) as box:
        document = collect(box, SUBJECT)  # the right of access reads the encrypted log and label batches
        assert [r["request_id"] for r in document["predictions"]] == ["req-0", "req-1"]
        assert sorted(r["request_id"] for r in document["labels"]) == ["req-0", "req-1"]
        assert EMAIL in json.dumps(document, default=str)
        out = tmp_path / "subject.json"
        assert export(box, SUBJECT, out, actor=OS_USER)["predictions"] == 2
        assert json.loads(out.read_text())["predictions"][0]["inputs"] == document["predictions"][0]["inputs"]
        payload = erase(box, SUBJECT, actor=OS_USER)["payload"]
        assert payload["totals"] == {"offline_rows": 2, "online_rows": 2, "prediction_records": 2, "label_rows": 2,
                                     "source_file_rows": 6, "log_lines": 0}  # fmt: skip
        logs = log_files(box.db, home, "churn_api", None, None)
        labels = [home / r["path"] for r in box.db.query("SELECT path FROM label_batches")]
        assert all(crypt.is_encrypted(f) for f in [*logs, *labels])  # rewritten encrypted
        assert not crypt.is_encrypted(home / "training_set.parquet")  # the user's file, rewritten as it was: plain
        assert sorted(pd.concat([crypt.read_table(f).to_pandas() for f in logs])["request_id"]) == ["req-2", "req-3"]
        after = collect(box, SUBJECT)
        assert after["predictions"] == after["labels"] == after["features"] == after["online"] == []
    assert scan(home) == {}  # not one decrypted byte, in any file under the box


def test_the_scanner_reads_sqlcipher_pages_and_wal_frames(tmp_path: Path) -> None:
    home = tmp_path / "box"
    ring = crypt.create_keyring(home)
    try:
        db = Database(home / "online.db")  # SQLCipher: the box is encrypted
        db.execute("CREATE TABLE t (v TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [(EMAIL if i == 50 else "other value " * 8,) for i in range(100)])
        wal = home / "online.db-wal"
        assert wal.stat().st_size and EMAIL.encode() not in wal.read_bytes() + (home / "online.db").read_bytes()
        assert EMAIL.encode() in sqlcipher_plaintext(wal, ring)
        assert scan(home, decrypt=False) == {} and set(scan(home)) == {"online.db-wal"}
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert set(scan(home)) == {"online.db"}  # checkpointed into the database's pages
        # SQLCipher turns secure_delete on with the key: a deleted row's bytes are zeroed at once, VACUUM or not
        assert db.scalar("PRAGMA secure_delete") == 1
        db.execute("DELETE FROM t WHERE v = ?", (EMAIL,))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert scan(home) == {} and db.scalar("SELECT count(*) FROM t") == 99
        db.close()
    finally:
        keyring.unregister(home)
