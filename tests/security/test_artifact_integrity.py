"""Artifact integrity: every artifact is signed (HMAC-SHA256, box key) when written and checked with its sha256
before every load; a changed byte, or a file replaced along with a recomputed sha256 in meta.db, is refused with an
error naming the model version and file, and `mlbox doctor` reports it; legacy unsigned artifacts are signed by
`mlbox doctor --repair` only once their sha256 verifies."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.serve.runtime import ModelCache
from mlbox.store.artifacts import ArtifactStore, IntegrityError, file_sha256

from ..conftest import OS_USER
from ..test_batch_predict import scoring_frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from threadpoolctl import threadpool_limits

    from mlbox.train.runner import train
    from mlbox.train.spec import parse_spec

    home = tmp_path_factory.mktemp("integrity") / "box"
    with Box.create(load_settings(home, environ={}), OS_USER) as box, threadpool_limits(limits=1):
        scoring_frame(400).to_parquet(home / "train.parquet")
        raw = {
            "experiment": "churn", "model": "churn", "task": "classification", "target": "churned", "flavor": "xgboost",
            "device": "cpu", "data": {"path": "train.parquet", "drop": ["customer_id", "spend"]},
            "params": {"n_estimators": 8, "max_depth": 3, "learning_rate": 0.3},
        }  # fmt: skip
        train(parse_spec(raw, "test spec", home), store=None, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "box"))


def onnx_sha(home: Path) -> str:
    with Box(load_settings(home, environ={})) as box:
        return str(box.registry.get("churn:1").artifacts["model.onnx"]["sha256"])


def writable(path: Path) -> None:
    os.chmod(path, 0o644)  # artifacts are stored 0444; the attacker here owns the files


def test_every_artifact_is_signed_with_a_private_box_key(home: Path) -> None:
    key = home / "keys" / "artifacts.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert key.read_bytes() != (home / "keys" / "audit.key").read_bytes()  # its own key, not the audit one
    store = ArtifactStore(home / "artifacts", sweep=False)
    stored = list(store.stored())
    assert len(stored) >= 3  # ONNX, native model, profile (and run artifacts)
    for f in stored:
        assert store.problem(f.sha256) is None
        assert store.recorded_mac(f.sha256) is not None


def test_a_changed_byte_is_refused_naming_the_version_and_file(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    sha = onnx_sha(home)
    path = home / "artifacts" / sha[:2] / sha
    writable(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with Box(load_settings(home, environ={})) as box:
        with pytest.raises(IntegrityError) as refused:
            ModelCache(box.registry, threads=1).get("churn:1")
        assert "model churn:1 file model.onnx" in refused.value.message and sha[:12] in refused.value.message
        assert "corrupt" in refused.value.message
        with pytest.raises(IntegrityError, match="model churn:1 file model.onnx"):
            box.registry.export("churn:1", "onnx", home.parent / "out.onnx")
    assert not (home.parent / "out.onnx").exists()
    result = cli("--home", str(home), "--json", "doctor")
    assert result.exit_code != 0
    report = {c["name"]: c for c in _doctor_checks(result.stdout)}
    assert report["artifact integrity"]["status"] == "fail"
    assert "model churn:1 file model.onnx" in report["artifact integrity"]["detail"]


def _doctor_checks(stdout: str) -> list[dict[str, str]]:
    """The JSON check list `mlbox --json doctor` prints before its failure line."""
    obj, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("[") :])
    return list(obj)


def test_a_replaced_file_with_a_recomputed_sha256_fails_the_hmac(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """An attacker who can write the box's files but not read its key swaps the model and fixes up meta.db."""
    old = onnx_sha(home)
    forged = (home / "artifacts" / old[:2] / old).read_bytes() + b"\x00"  # stand-in for a different model
    new = hashlib.sha256(forged).hexdigest()
    target = home / "artifacts" / new[:2] / new
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(forged)
    db = sqlite3.connect(home / "meta.db")
    row = json.loads(db.execute("SELECT artifacts FROM model_versions WHERE name = 'churn' AND version = 1").fetchone()[0])
    row["model.onnx"]["sha256"] = new
    db.execute("UPDATE model_versions SET artifacts = ? WHERE name = 'churn' AND version = 1", (json.dumps(row),))
    db.commit()
    db.close()
    with Box(load_settings(home, environ={})) as box:
        with pytest.raises(IntegrityError, match="model churn:1 file model.onnx.*no HMAC"):
            ModelCache(box.registry, threads=1).get("churn:1")
        # forging the HMAC file too, without the key, does not help
        (target.with_name(new + ".hmac")).write_text("0" * 64)
        with pytest.raises(IntegrityError, match="fails its HMAC check"):
            ModelCache(box.registry, threads=1).get("churn:1")
        # nor does signing it with the audit key (a different key)
        audit_key = (home / "keys" / "audit.key").read_bytes()
        target.with_name(new + ".hmac").write_text(hmac.new(audit_key, forged, hashlib.sha256).hexdigest())
        with pytest.raises(IntegrityError, match="fails its HMAC check"):
            box.registry.export("churn:1", "onnx", home.parent / "out.onnx")
    report = {c["name"]: c for c in _doctor_checks(cli("--home", str(home), "--json", "doctor").stdout)}
    assert report["artifact integrity"]["status"] == "fail" and "HMAC" in report["artifact integrity"]["detail"]


def test_a_tampered_profile_is_refused(home: Path) -> None:
    with Box(load_settings(home, environ={})) as box:
        sha = box.db.scalar("SELECT sha256 FROM model_profiles WHERE name = 'churn' AND version = 1")
        path = home / "artifacts" / sha[:2] / sha
        writable(path)
        path.write_text(path.read_text().replace('"rows"', '"rowz"'))
        with pytest.raises(IntegrityError, match="reference profile of model churn:1"):
            box.registry.profile("churn:1")


def test_legacy_unsigned_artifacts_are_signed_by_repair_only_when_their_sha256_verifies(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    store = ArtifactStore(home / "artifacts", sweep=False)
    hashes = [f.sha256 for f in store.stored()]
    for sha in hashes:  # a box written before artifacts were signed
        store.mac_path(sha).unlink()
    broken = onnx_sha(home)
    path = store.path(broken)
    writable(path)
    path.write_bytes(path.read_bytes()[:-1])  # and one of them damaged meanwhile
    report = {c["name"]: c for c in _doctor_checks(cli("--home", str(home), "--json", "doctor").stdout)}
    assert report["artifact integrity"]["status"] == "fail"
    assert "no HMAC" in report["artifact integrity"]["detail"] and "--repair" in report["artifact integrity"]["detail"]
    repaired = cli("--home", str(home), "--json", "doctor", "--repair")
    assert _first_json(repaired.stdout)["repaired"]["signed_artifacts"] == len(hashes) - 1
    assert store.recorded_mac(broken) is None  # never signed: its sha256 fails
    assert all(store.problem(sha) is None for sha in hashes if sha != broken)
    with Box(load_settings(home, environ={})) as box:
        with pytest.raises(IntegrityError, match="corrupt"):
            ModelCache(box.registry, threads=1).get("churn:1")
        assert box.registry.profile("churn:1") is not None  # the intact ones load again


def _first_json(stdout: str) -> dict[str, Any]:
    """The JSON object `mlbox --json doctor --repair` prints before any failure line."""
    obj, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("{") :])
    return dict(obj)


def test_removing_an_unreferenced_artifact_removes_its_hmac(home: Path) -> None:
    store = ArtifactStore(home / "artifacts", sweep=False)
    src = home.parent / "orphan.bin"
    src.write_bytes(b"written, never named by a catalog row")
    orphan = store.put(src)
    assert store.mac_path(orphan.sha256).is_file()
    referenced = {f.sha256 for f in store.stored()} - {orphan.sha256}
    assert [f.sha256 for f in store.remove_unreferenced(referenced, grace_s=0)] == [orphan.sha256]
    assert not store.path(orphan.sha256).exists() and not store.mac_path(orphan.sha256).exists()
    assert all(store.problem(sha) is None for sha in referenced)  # the named ones keep theirs


def test_a_package_verifies_and_re_signs_under_the_bundled_key(home: Path) -> None:
    """package copies verified artifacts into the Bento's own box with that box's key, never this one's."""
    store = ArtifactStore(home / "artifacts", sweep=False)
    bundled = ArtifactStore(home.parent / "bundle" / "artifacts")
    sha = onnx_sha(home)
    copy = bundled.put(store.open_verified(sha, "model churn:1 file model.onnx"))
    assert copy.sha256 == sha and bundled.problem(sha) is None
    assert bundled.key != store.key and bundled.recorded_mac(sha) != store.recorded_mac(sha)


def test_the_load_time_cost_is_negligible(home: Path) -> None:
    """sha256 + HMAC in one pass vs sha256 alone, on the real ONNX model; the serving cache pays it once per version."""
    store = ArtifactStore(home / "artifacts", sweep=False)
    sha = onnx_sha(home)
    path = store.path(sha)

    def best(fn, n: int = 30) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.min(times))

    plain = best(lambda: file_sha256(path))
    verified = best(lambda: store.open_verified(sha))
    size = path.stat().st_size
    print(f"\nartifact integrity: {size} B model.onnx, sha256 {plain * 1e6:.0f} us, sha256+HMAC verify {verified * 1e6:.0f} us")
    assert verified < 0.05  # well under one model-session creation
