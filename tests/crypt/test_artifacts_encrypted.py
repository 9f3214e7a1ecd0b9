"""Model artifacts in an encrypted box: stored sealed (AES-256-GCM), decrypted only in memory after their HMAC (of
the stored bytes) and sha256 (of the plaintext) verify; unreadable when copied out; a changed byte refused naming the
artifact; doctor checks every artifact is encrypted; a package decrypts into the Bento, a backup stays encrypted."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.doctor import check_artifact_encryption, check_artifacts
from mlbox.flavors import get_flavor
from mlbox.flavors.onnx import run, session
from mlbox.serve.runtime import ModelCache
from mlbox.store import crypt, keyring
from mlbox.store.artifacts import ArtifactStore, IntegrityError
from mlbox.store.backup import backup_box
from mlbox.store.layout import BoxPaths

from ..conftest import OS_USER
from ..test_batch_predict import scoring_frame

REF = "churn:1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An encrypted box with churn:1, a small scikit-learn classifier trained and registered in it."""
    from threadpoolctl import threadpool_limits

    from mlbox.train.runner import train
    from mlbox.train.spec import parse_spec

    root = tmp_path_factory.mktemp("encrypted-artifacts")
    data = root / "data"  # the user's training file lives outside the box
    data.mkdir()
    scoring_frame(400).to_parquet(data / "train.parquet")
    home = root / "box"
    with Box.create(load_settings(home, environ={}), OS_USER, encrypt=True) as box, threadpool_limits(limits=1):
        raw = {
            "experiment": "churn", "model": "churn", "task": "classification", "target": "churned", "flavor": "sklearn",
            "device": "cpu", "data": {"path": "train.parquet", "drop": ["customer_id", "spend"]}, "params": {"max_iter": 20},
        }  # fmt: skip
        train(parse_spec(raw, "test spec", data), store=None, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)
    yield home
    keyring.unregister(home)


@pytest.fixture
def home(trained: Path, tmp_path: Path) -> Iterator[Path]:
    copy = Path(shutil.copytree(trained, tmp_path / "box"))
    yield copy
    keyring.unregister(copy)


def _box(home: Path) -> Box:
    return Box(load_settings(home, environ={}))


def _files(box: Box) -> dict[str, str]:
    """Every artifact churn:1 names (file name -> sha256), its reference profile included."""
    version = box.registry.get(REF)
    out = {name: meta["sha256"] for name, meta in version.artifacts.items()}
    out["profile"] = box.db.scalar("SELECT sha256 FROM model_profiles WHERE name = 'churn' AND version = 1")
    return out


def test_a_model_trained_in_an_encrypted_box_registers_loads_and_predicts(home: Path) -> None:
    with _box(home) as box:
        assert box.artifacts.encrypted
        before = sorted(p for p in home.rglob("*"))
        loaded = ModelCache(box.registry, threads=1).get(REF)
        frame = scoring_frame(50, seed=7)
        X = loaded.signature.encode(frame)
        onnx_p = run(loaded.session, X)
        native = get_flavor("sklearn").load_bytes(box.registry.native_files(REF))  # decrypted in memory
        native_p = get_flavor("sklearn").predict(native, X)
        assert onnx_p.shape == (50, 2) and np.allclose(onnx_p, native_p, atol=1e-4)
        assert box.registry.profile(REF)["rows"] > 0  # the reference profile decrypts too
        assert sorted(p for p in home.rglob("*")) == before  # loading wrote no file (no plaintext copy) into the box


def test_stored_artifacts_are_sealed_and_unreadable_copied_out(home: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    with _box(home) as box:
        files = _files(box)
        plain = {name: box.artifacts.read_verified(sha) for name, sha in files.items()}
    assert set(files) == {"model.onnx", "native/model.joblib", "profile"}
    proto = onnx.load_model_from_string(plain["model.onnx"])
    markers = [proto.producer_name.encode(), proto.graph.input[0].name.encode(), *{n.op_type.encode() for n in proto.graph.node}]
    for name, sha in files.items():
        stored = (home / "artifacts" / sha[:2] / sha).read_bytes()
        assert stored.startswith(crypt.ENVELOPE) and crypt.is_encrypted(home / "artifacts" / sha[:2] / sha)
        # the sha256 names the plaintext (content addressing and lineage unchanged); the stored bytes differ
        assert hashlib.sha256(plain[name]).hexdigest() == sha != hashlib.sha256(stored).hexdigest()
        copied = tmp_path / f"copied-{sha[:8]}"
        copied.write_bytes(stored)
        with pytest.raises(crypt.KeyProblem, match="encrypted and no key"):
            crypt.read_bytes(copied)  # outside the box, without its keys
    onnx_copy = tmp_path / f"copied-{files['model.onnx'][:8]}"
    stored_onnx = onnx_copy.read_bytes()
    assert all(m and m in plain["model.onnx"] and m not in stored_onnx for m in markers), markers
    with pytest.raises(Exception):  # noqa: B017 - protobuf's DecodeError, or a model with no graph
        model = onnx.load(str(onnx_copy))
        assert model.graph.node
    with pytest.raises(Exception, match="(?i)protobuf|invalid|load model"):
        ort.InferenceSession(str(onnx_copy), providers=["CPUExecutionProvider"])
    stored_native = (tmp_path / f"copied-{files['native/model.joblib'][:8]}").read_bytes()
    assert b"sklearn" in plain["native/model.joblib"] and b"sklearn" not in stored_native
    stored_profile = (tmp_path / f"copied-{files['profile'][:8]}").read_bytes()
    assert b"income" in plain["profile"] and b"income" not in stored_profile


def _tamper(path: Path) -> None:
    os.chmod(path, 0o644)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def test_a_changed_ciphertext_byte_is_refused_before_decryption_naming_the_artifact(home: Path) -> None:
    with _box(home) as box:
        sha = _files(box)["model.onnx"]
        _tamper(box.artifacts.path(sha))
        with pytest.raises(IntegrityError, match=rf"model {REF} file model\.onnx \(artifact {sha[:12]}\).*HMAC") as caught:
            ModelCache(box.registry, threads=1).get(REF)
        assert "mlbox doctor" in (caught.value.hint or "")
        report = check_artifacts(box.paths, box.db, box.audit)
        assert report.status == "fail" and f"model {REF} file model.onnx ({sha[:12]})" in report.detail


def test_a_re_signed_forgery_still_fails_authenticated_decryption(home: Path) -> None:
    """Someone holding the HMAC key but not the encryption key re-signs a changed file: GCM refuses it."""
    with _box(home) as box:
        sha = _files(box)["native/model.joblib"]
        path = box.artifacts.path(sha)
        _tamper(path)
        mac_path = box.artifacts.mac_path(sha)
        os.chmod(mac_path, 0o644)
        mac_path.write_text(hmac.new(box.artifacts.key, path.read_bytes(), hashlib.sha256).hexdigest())
        with pytest.raises(IntegrityError, match=rf"model {REF} file native/model\.joblib.*does not decrypt"):
            box.registry.native_files(REF)


def test_doctor_fails_on_a_plaintext_artifact_and_reseal_encrypts_it(home: Path) -> None:
    with _box(home) as box:
        store = box.artifacts
        assert check_artifact_encryption(box.paths).status == "ok"  # type: ignore[union-attr]
        sha = _files(box)["profile"]
        data = store.read_verified(sha)
        path = store.path(sha)  # as a box converted by an older mlbox might hold it: plaintext, signed
        os.chmod(path, 0o644)
        path.write_bytes(data)
        os.chmod(store.mac_path(sha), 0o644)
        store.mac_path(sha).write_text(hmac.new(store.key, data, hashlib.sha256).hexdigest())
        report = check_artifact_encryption(box.paths)
        assert report is not None and report.status == "fail" and sha[:12] in report.detail
        assert store.problem(sha) is None  # it verifies: flagged for confidentiality, still loadable
        assert store.put_bytes(data).sha256 == sha and crypt.is_encrypted(path)  # a new put replaces it sealed
        path.chmod(0o644)
        path.write_bytes(data)
        store.mac_path(sha).chmod(0o644)
        store.mac_path(sha).write_text(hmac.new(store.key, data, hashlib.sha256).hexdigest())
        assert store.reseal({sha}) == [sha] and crypt.is_encrypted(path)
        assert check_artifact_encryption(box.paths).status == "ok"  # type: ignore[union-attr]
        assert box.registry.profile(REF) is not None
    assert check_artifact_encryption(BoxPaths(home.parent / "nowhere")) is None  # a plain box: no such check


def test_concurrent_puts_of_one_content_leave_a_file_that_verifies(home: Path) -> None:
    """Two encryptions of one content differ (random nonce): file and HMAC are published together, under the lock."""
    with _box(home) as box:
        store = box.artifacts
        data = os.urandom(256 * 1024)
        sha = hashlib.sha256(data).hexdigest()
        problems: list[object] = []

        def writer() -> None:
            for _ in range(10):
                store.put_bytes(data)

        def reader() -> None:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and any(t.is_alive() for t in writers):
                if store.path(sha).exists() and store.recorded_mac(sha) and (problem := store.problem(sha)) is not None:
                    problems.append(problem)

        writers = [threading.Thread(target=writer) for _ in range(4)]
        watch = threading.Thread(target=reader)
        for t in (*writers, watch):
            t.start()
        for t in (*writers, watch):
            t.join()
        assert problems == [] and store.problem(sha) is None and store.read_verified(sha) == data


def test_a_backup_stays_encrypted_and_restores_with_the_master_key(home: Path, tmp_path: Path) -> None:
    with _box(home) as box:
        report = backup_box(home, tmp_path / "backup")
        files = _files(box)
    dest = tmp_path / "backup"
    assert report.encrypted and not report.master_key and not (dest / "keys" / "master.key").exists()
    assert (dest / "keys" / "keyring.json").is_file()
    for db in ("meta.db", "online.db"):
        with pytest.raises(sqlite3.DatabaseError, match="not a database"):
            sqlite3.connect(dest / db).execute("SELECT count(*) FROM sqlite_master").fetchone()
    for sha in files.values():  # artifacts copied as they are: sealed
        assert (dest / "artifacts" / sha[:2] / sha).read_bytes() == (home / "artifacts" / sha[:2] / sha).read_bytes()
    with pytest.raises(crypt.KeyProblem, match="master key is missing"):
        _box(dest)
    shutil.copy2(home / "keys" / "master.key", dest / "keys" / "master.key")  # the operator restores the key
    try:
        with _box(dest) as restored:
            loaded = ModelCache(restored.registry, threads=1).get(REF)
            assert run(loaded.session, loaded.signature.encode(scoring_frame(5, seed=1))).shape == (5, 2)
            assert check_artifacts(restored.paths, restored.db, restored.audit).status == "ok"
    finally:
        keyring.unregister(dest)
    with_key = backup_box(home, tmp_path / "backup-with-key", include_master_key=True)
    assert with_key.master_key and (tmp_path / "backup-with-key" / "keys" / "master.key").is_file()


def test_a_package_decrypts_the_models_into_the_bento(home: Path) -> None:
    from mlbox.package import build_package

    with _box(home) as box:
        box.deployments.create("sealed", REF, OS_USER)
        result = build_package(box, "sealed", OS_USER)
        files = _files(box)
    src = Path(result.path) / "src" / "box"
    db = sqlite3.connect(src / "meta.db")  # a plain database: the Bento runs without the box's keys
    try:
        assert [f"{n}:{v}" for n, v in db.execute("SELECT name, version FROM model_versions")] == [REF]
    finally:
        db.close()
    assert not (src / "keys" / "keyring.json").exists() and not (src / "keys" / "master.key").exists()
    bundled = ArtifactStore(src / "artifacts", sweep=False)
    for name in ("model.onnx", "native/model.joblib"):
        sha = files[name]
        assert not crypt.is_encrypted(bundled.path(sha)) and bundled.problem(sha) is None
    assert session(bundled.path(files["model.onnx"]), threads=1) is not None


def test_the_load_time_cost_of_decryption(home: Path, tmp_path: Path) -> None:
    """read_verified + onnxruntime session, encrypted vs the same model in a plain store; printed, and bounded."""
    with _box(home) as box:
        sha = _files(box)["model.onnx"]
        data = box.artifacts.read_verified(sha)
        plain = ArtifactStore(tmp_path / "plain" / "artifacts")
        assert plain.put_bytes(data).sha256 == sha and not plain.encrypted

        def best(fn, n: int = 20) -> float:  # type: ignore[no-untyped-def]
            times = []
            for _ in range(n):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return float(np.min(times))

        read_enc, read_plain = best(lambda: box.artifacts.read_verified(sha)), best(lambda: plain.read_verified(sha))
        load_enc = best(lambda: session(box.artifacts.read_verified(sha), threads=1), 5)
        load_plain = best(lambda: session(plain.read_verified(sha), threads=1), 5)
    print(
        f"\nartifact load, {len(data)} B model.onnx: verify+read plain {read_plain * 1e6:.0f} us, encrypted {read_enc * 1e6:.0f} us; "
        f"verify+read+session plain {load_plain * 1e3:.2f} ms, encrypted {load_enc * 1e3:.2f} ms"
    )
    assert read_enc < 0.05 and load_enc < load_plain + 0.05  # decryption adds well under one session creation


@pytest.mark.parametrize(("name", "params"), [("xgboost", {"n_estimators": 5}), ("torch", {"epochs": 2, "hidden": [8]})])
def test_every_flavor_loads_its_native_files_from_memory(name: str, params: dict[str, object], tmp_path: Path) -> None:
    """What `Registry.native_files` hands over (decrypted bytes) loads to the same model as the saved files."""
    from ..flavors.conftest import make_data

    data = make_data("binary")
    flavor = get_flavor(name)
    model = flavor.fit(data.request(params=params)).model
    saved = flavor.save(model, tmp_path)
    loaded = flavor.load_bytes({p.name: p.read_bytes() for p in saved})
    assert np.allclose(flavor.predict(loaded, data.X_test), flavor.predict(model, data.X_test), atol=1e-6)
