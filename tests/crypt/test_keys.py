"""Key management of an encrypted box: `mlbox keys encrypt-box`, `mlbox keys rotate` (also under a running server,
and killed mid-way), `mlbox keys status`, and the refusals of a wrong, missing or exposed key.

The module's template is templates/tabular-classification as a *plain* box: views applied, ingested and
materialized, and churn_fs:1 (xgboost, 10 trees) trained from the feature store, so it holds feature
batches, online.db rows and model artifacts. The encrypted template is a copy of it converted by
`encrypt_box`, with `fs` deployed. Each test works on its own copy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import Conflict, UsageError
from mlbox.project import init_project
from mlbox.store import convert, crypt, keyring
from mlbox.store.layout import BoxPaths
from mlbox.store.boxfiles import BoxFile, box_files, exclusive, file_key_id
from mlbox.store.rotate import rotate, status
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from ..conftest import MLBOX_SCRIPT, OS_USER
from ..serve.conftest import FAST_XGB, running_server, subprocess_env

CUSTOMERS = [1001, 1002, 1003, 1010, 999_999]  # the last is unknown: its features come back missing
NEEDLES = (b"customer1014@example.ae", b"ras_al_khaimah", b"abu_dhabi")  # values of the template's data


def open_box(home: Path) -> Box:
    box = Box.create(load_settings(home, environ={}), OS_USER)
    box.actor = OS_USER
    return box


def settings(home: Path) -> Any:
    return load_settings(home, environ={})


@pytest.fixture(scope="module")
def plain_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(home, an admin token) of the plain box described in the module docstring."""
    from threadpoolctl import threadpool_limits

    home = tmp_path_factory.mktemp("keys-plain") / "box"
    init_project(home, "tabular-classification")
    with open_box(home) as box, threadpool_limits(limits=1):
        fs = box.features
        fs.apply(fs.load(), OS_USER)
        for view in fs.catalog.latest_views():
            fs.ingest(view.name, actor=OS_USER)
        fs.materialize(actor=OS_USER)
        raw = yaml.safe_load((home / "train.yaml").read_text())
        raw.update(params=FAST_XGB, model="churn_fs", device="cpu")
        raw.pop("gate", None)
        train(parse_spec(raw, "train.yaml", home), store=fs, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)
        token = box.identity.create_token(OS_USER, OS_USER, never_expires=True)[1]
    return home, token


@pytest.fixture(scope="module")
def encrypted_template(plain_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The plain template converted by `encrypt_box`, with deployment `fs` (churn_fs:1)."""
    home = tmp_path_factory.mktemp("keys-encrypted") / "box"
    shutil.copytree(plain_template[0], home)
    convert.encrypt_box(settings(home), OS_USER)
    with open_box(home) as box:
        box.deployments.create("fs", "churn_fs:1", OS_USER)
    return home, plain_template[1]


def copy(template: tuple[Path, str], dest: Path) -> Path:
    shutil.copytree(template[0], dest)
    return dest


def reads(home: Path) -> dict[str, Any]:
    """What the box's read paths return: offline rows (DuckDB), a training set, online values, a model's bytes."""
    with open_box(home) as box:
        fs = box.features
        refs = dict(box.registry.get("churn_fs:1").lineage["feature_refs"])
        onnx = box.registry.get("churn_fs:1").artifacts["model.onnx"]["sha256"]
        labels = home / "data" / "labels.csv"
        features = sorted(set(refs.values()))
        ts = fs.training_set(labels, features, protected="raw")
        return {
            "profile": fs.sql("SELECT * FROM customer_profile ORDER BY customer_id, updated_at", protected="raw")[1],
            "usage": fs.sql("SELECT count(*), sum(calls), max(data_gb) FROM usage", protected="raw")[1],
            "training_set": (ts.fingerprint, ts.frame.to_dict("list")),
            "online": fs.get_online_features(features, [{"customer_id": c} for c in CUSTOMERS]),
            "model": box.artifacts.read_verified(onnx),
        }


def key_ids(home: Path) -> dict[Path, str | None]:
    return {f.path: file_key_id(f) for f in box_files(BoxPaths(home))}


def stored_keys(home: Path) -> list[str]:
    return sorted(json.loads((home / "keys" / "keyring.json").read_text())["keys"])


def keys_cli(home: Path, *args: str, timeout: float = 120, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """`mlbox keys ARGS` as a real process (through `mlbox.cli.main.run`, with `keys` added if not yet wired)."""
    from mlbox.cli.main import app

    if any(group.name == "keys" for group in app.registered_groups):
        cmd = [str(MLBOX_SCRIPT), "keys", *args]
    else:
        wire = "from mlbox.cli import main, keys; main.app.add_typer(keys.app, name='keys'); sys.argv[0] = 'mlbox'; main.run()"
        cmd = [sys.executable, "-c", f"import sys; {wire}", "keys", *args]
    env = subprocess_env(home, **({"MLBOX_TOKEN": token} if token else {}))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=home)


# encrypt-box ---------------------------------------------------------------------------


def test_encrypt_box_gives_identical_reads_and_no_plaintext_in_any_file(plain_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(plain_template, tmp_path / "box")
    before = reads(home)
    assert any(n in (home / "online.db").read_bytes() for n in NEEDLES)  # the scan below can see a value
    done = keys_cli(home, "encrypt-box")
    assert done.returncode == 0, done.stderr
    assert "encrypted" in done.stdout and "master key" in done.stdout
    assert reads(home) == before

    files = key_ids(home)
    current = stored_keys(home)
    assert len(current) == 1 and files and set(files.values()) == set(current)
    kinds = {f.kind for f in box_files(BoxPaths(home))}
    assert kinds == {"parquet", "artifact"}
    stores = [p for p in home.rglob("*") if p.is_file() and p.relative_to(home).parts[0] not in ("data",)]
    for path in stores:  # the project's own source CSVs (data/) are the user's files, not the box's stores
        data = path.read_bytes()
        assert not any(n in data for n in NEEDLES), path
    for db in ("meta.db", "online.db"):
        assert (home / db).read_bytes()[:16] != convert.SQLITE_MAGIC
        out = tmp_path / f"copied-{db}"
        shutil.copy(home / db, out)
        with pytest.raises(sqlite3.DatabaseError):
            sqlite3.connect(out).execute("SELECT count(*) FROM sqlite_master").fetchone()
    batch = next(p for p in files if p.suffix == ".parquet")
    shutil.copy(batch, tmp_path / "copied.parquet")
    with pytest.raises(OSError):
        pq.read_table(tmp_path / "copied.parquet")

    with open_box(home) as box:
        entry = box.audit.entries(limit=1, action="keys.encrypt_box")[0].as_dict()
        assert box.audit.verify().ok
    details = entry["details"] if isinstance(entry["details"], dict) else json.loads(entry["details"])
    assert details["databases"] == ["meta.db", "online.db"] and details["files"] == len(files)
    again = keys_cli(home, "encrypt-box")
    assert again.returncode != 0 and "already encrypted" in again.stderr


HOLD = "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1'); print('ok', flush=True); time.sleep(60)"


def test_encrypt_box_is_refused_while_a_process_holds_the_box(plain_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(plain_template, tmp_path / "box")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(home / "meta.db")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(Conflict) as refused:
            convert.encrypt_box(settings(home), OS_USER)
        assert f"pid {holder.pid}" in refused.value.message and "mlbox serve" in (refused.value.hint or "")
        assert not crypt.box_encrypted(home)
    finally:
        holder.kill()
        holder.wait()
    convert.encrypt_box(settings(home), OS_USER)
    assert crypt.box_encrypted(home)


def test_a_conversion_killed_mid_way_reads_whole_and_a_rerun_finishes_it(plain_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(plain_template, tmp_path / "box")
    before = reads(home)
    script = (
        "import os, signal, sys\n"
        "from mlbox.config import load_settings\n"
        "from mlbox.store.convert import encrypt_box\n"
        "def die(phase, done, total):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 after the databases and the first file\n"
        f"encrypt_box(load_settings(sys.argv[1], environ={{}}), {OS_USER!r}, progress=die)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(home)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert crypt.box_encrypted(home) and not (home / "keys" / convert.STAGING).exists()
    assert list(key_ids(home).values()).count(None) == len(key_ids(home)) - 1  # one file encrypted, the rest not yet
    assert reads(home) == before  # databases encrypted, files mixed: the box reads whole
    assert status(settings(home))["files"]["plaintext"] == len(key_ids(home)) - 1
    done = keys_cli(home, "encrypt-box")
    assert done.returncode == 0, done.stderr
    assert None not in key_ids(home).values() and reads(home) == before


# rotation ------------------------------------------------------------------------------


def test_rotation_reencrypts_every_file_and_database_and_retires_the_old_key(encrypted_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(encrypted_template, tmp_path / "box")
    job = home / "jobs" / "7"  # a job's folder: what it writes there is encrypted (a training set, a sealed file)
    with open_box(home) as box:
        features = sorted(set(box.registry.get("churn_fs:1").lineage["feature_refs"].values()))
        box.features.training_set(home / "data" / "labels.csv", features, out=job / "ts.parquet", protected="raw")
    crypt.write_bytes(job / "subject.json", b'{"email": "customer1014@example.ae"}')
    outside = {p: p.read_bytes() for p in job.iterdir()}
    extra = {p: (crypt.read_table(p) if p.suffix == ".parquet" else crypt.read_bytes(p)) for p in outside}
    before, old_files, (old,) = reads(home), key_ids(home), stored_keys(home)
    assert set(old_files.values()) == {old} and all(crypt.is_encrypted(p) for p in outside)

    with exclusive(BoxPaths(home), "x"), pytest.raises(Conflict, match="another key operation"):
        rotate(settings(home), OS_USER)  # one key operation at a time
    result = rotate(settings(home), OS_USER, settle_s=0.1)
    (new,) = stored_keys(home)
    assert new != old and result.current == new and result.previous == [old] and result.retired == [old]
    assert set(outside) <= set(old_files)  # box_files covers the jobs' folders
    assert result.databases == ["meta.db", "online.db"] and result.files == len(old_files)
    assert key_ids(home) == dict.fromkeys(old_files, new)
    assert reads(home) == before
    for path, value in extra.items():
        assert path.read_bytes() != outside[path]
        assert file_key_id(BoxFile("parquet" if path.suffix == ".parquet" else "sealed", path)) == new
        assert (crypt.read_table(path) if path.suffix == ".parquet" else crypt.read_bytes(path)) == value
    found = status(settings(home))
    assert found["keys"] == [new] and found["files"] == {new: len(old_files)}
    assert found["databases"] == {"meta.db": new, "online.db": new}
    with open_box(home) as box:
        entry = box.audit.entries(limit=1, action="keys.rotate")[0].as_dict()
    assert entry["actor"] == OS_USER and new in json.dumps(entry["details"])


def test_a_rotation_killed_mid_way_leaves_an_openable_box_and_a_rerun_finishes_it(
    encrypted_template: tuple[Path, str], tmp_path: Path
) -> None:
    home = copy(encrypted_template, tmp_path / "box")
    before, (old,) = reads(home), stored_keys(home)
    script = (
        "import os, signal, sys\n"
        "from mlbox.config import load_settings\n"
        "from mlbox.store.rotate import rotate\n"
        "def die(phase, done, total):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 after the first file was rewritten\n"
        f"rotate(load_settings(sys.argv[1], environ={{}}), {OS_USER!r}, progress=die)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(home)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    keyring.unregister(home)  # read it as a new process would, from the keyring as written
    keys = stored_keys(home)
    assert len(keys) == 2 and old in keys
    (new,) = [k for k in keys if k != old]
    assert set(key_ids(home).values()) == {old, new}  # one file rewritten, the others not yet
    assert reads(home) == before  # the box opens and reads whole with the keyring as written
    assert status(settings(home))["rotation_unfinished"] is True

    done = keys_cli(home, "rotate")
    assert done.returncode == 0, done.stderr
    assert "finished the interrupted rotation" in done.stdout
    assert stored_keys(home) == [new] and set(key_ids(home).values()) == {new}
    assert reads(home) == before
    assert not [p for p in home.rglob(".tmp-*rekey*")]


def test_connections_opened_before_a_rotation_keep_reading_and_writing(encrypted_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(encrypted_template, tmp_path / "box")
    with open_box(home) as box:  # opened under the old key, as a running server's connections are
        users = box.db.scalar("SELECT count(*) FROM users")
        rotate(settings(home), OS_USER, settle_s=0.1)
        box.identity.add_user(OS_USER, "after_rotation", "viewer")  # a write first: BEGIN IMMEDIATE meets the new key
        assert box.db.scalar("SELECT count(*) FROM users") == users + 1
        assert box.features.get_online_features(["usage:calls"], [{"customer_id": 1001}])["calls"][0] is not None


def test_a_box_whose_rotation_stopped_after_adding_its_key_opens_and_writes(encrypted_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(encrypted_template, tmp_path / "box")
    crypt.open_box(home).add_key()  # rotate's first step: the databases are still under the old key
    keyring.unregister(home)
    with open_box(home) as box:  # a new process opens it with the keyring as written
        box.identity.add_user(OS_USER, "mid_rotation", "viewer")
        assert box.features.materialize(full=True, actor=OS_USER)  # rebuilds every online table: online.db writes
    result = rotate(settings(home), OS_USER, settle_s=0.1)
    assert result.resumed and result.databases == ["meta.db", "online.db"] and len(stored_keys(home)) == 1


def test_rotation_under_a_running_server_fails_no_request(encrypted_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(encrypted_template, tmp_path / "box")
    token = encrypted_template[1]
    with open_box(home) as box:
        refs = dict(box.registry.get("churn_fs:1").lineage["feature_refs"])
    (old,) = stored_keys(home)
    failures: list[str] = []
    answered = {"predict": 0, "online": 0}
    stop = threading.Event()
    with running_server(home, {"admin": token}, MLBOX_SERVE_RELOAD_SECONDS="0.2") as server:
        headers = {"Authorization": f"Bearer {token}"}
        everyone = {"entities": [{"customer_id": c} for c in CUSTOMERS]}
        baseline = server.client.post("/v1/deployments/fs/predict", json=everyone, headers=headers)
        assert baseline.status_code == 200, baseline.text

        def load() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                customer = CUSTOMERS[i % len(CUSTOMERS)]
                try:
                    r = server.client.post("/v1/deployments/fs/predict", json={"entities": [{"customer_id": customer}]}, headers=headers)
                    if r.status_code != 200:
                        failures.append(f"predict {r.status_code}: {r.text[:200]}")
                    else:
                        answered["predict"] += 1
                    body = {"features": sorted(set(refs.values())), "entities": [{"customer_id": customer}]}
                    r = server.client.post("/v1/features/online", json=body, headers=headers)
                    if r.status_code != 200:
                        failures.append(f"online {r.status_code}: {r.text[:200]}")
                    else:
                        answered["online"] += 1
                except Exception as exc:  # a transport error is a failed request too
                    failures.append(f"{type(exc).__name__}: {exc}")

        worker = threading.Thread(target=load)
        worker.start()
        try:
            time.sleep(1.0)  # the log has files under the old key before the rotation starts
            during = dict(answered)
            done = keys_cli(home, "rotate")
            after_rotation = dict(answered)
            time.sleep(1.0)  # and keeps answering under the new key
        finally:
            stop.set()
            worker.join(30)
        assert done.returncode == 0, done.stderr + server.log_tail()
        assert not failures, f"{len(failures)} failed: {failures[:3]}\n{server.log_tail(80)}"
        assert after_rotation["predict"] > during["predict"] and after_rotation["online"] > during["online"]
        assert answered["predict"] > after_rotation["predict"]
        final = server.client.post("/v1/deployments/fs/predict", json=everyone, headers=headers)
        assert final.status_code == 200 and final.json()["predictions"] == baseline.json()["predictions"]
    (new,) = stored_keys(home)
    assert new != old
    ids = key_ids(home)
    logs = [p for p in ids if "predictions" in p.parts]
    assert logs, "the prediction log wrote no file"
    assert set(ids.values()) == {new}  # log files written during the rotation were caught too
    with open_box(home) as box:
        assert box.db.scalar("SELECT count(*) FROM prediction_batches") >= len(logs)


# refusals --------------------------------------------------------------------------------


def test_key_files_readable_by_others_are_refused_naming_the_file_and_the_fix(encrypted_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(encrypted_template, tmp_path / "box")
    for name in (keyring.MASTER, keyring.KEYRING):
        path = home / "keys" / name
        os.chmod(path, 0o640)
        keyring.unregister(home)
        with pytest.raises(crypt.KeyProblem) as refused:
            open_box(home)
        assert str(path) in refused.value.message and refused.value.hint == f"run `chmod 600 {path}`"
        os.chmod(path, 0o600)
    done = keys_cli(home, "status")
    assert done.returncode == 0, done.stderr
    os.chmod(home / "keys" / keyring.MASTER, 0o604)
    refused_cli = keys_cli(home, "status")
    assert refused_cli.returncode != 0 and "chmod 600" in refused_cli.stderr + refused_cli.stdout


def test_a_missing_or_wrong_master_key_is_refused_clearly(encrypted_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(encrypted_template, tmp_path / "box")
    master = home / "keys" / keyring.MASTER
    real = master.read_text()
    master.unlink()
    keyring.unregister(home)
    with pytest.raises(crypt.KeyProblem) as missing:
        open_box(home)
    assert "master key is missing" in missing.value.message and str(master) in missing.value.message
    assert "encryption.master_key" in (missing.value.hint or "")

    master.write_text(keyring.new_master_key() + "\n")
    os.chmod(master, 0o600)
    with pytest.raises(crypt.KeyProblem) as wrong:
        open_box(home)
    assert "wrong key" in wrong.value.message and real.strip() not in wrong.value.message
    done = keys_cli(home, "rotate")
    assert done.returncode != 0 and "wrong key" in done.stderr and real.strip() not in done.stderr + done.stdout

    master.unlink()  # the right key by reference works, and is what rotate uses
    keyring.unregister(home)
    by_env = load_settings(home, environ={"MLBOX_ENCRYPTION_MASTER_KEY": real.strip()})
    result = rotate(by_env, OS_USER, settle_s=0.1)
    assert len(stored_keys(home)) == 1 and result.retired


def test_status_and_rotate_refuse_a_plain_box(plain_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(plain_template, tmp_path / "box")
    found = status(settings(home))
    assert found["encrypted"] is False and found["files"]["plaintext"] == len(list(box_files(BoxPaths(home))))
    with pytest.raises(UsageError):
        rotate(settings(home), OS_USER)
    done = keys_cli(home, "rotate")
    assert done.returncode != 0 and "not an encrypted box" in done.stderr and "encrypt-box" in done.stderr


def test_key_commands_are_for_admins_only(plain_template: tuple[Path, str], tmp_path: Path) -> None:
    home = copy(plain_template, tmp_path / "box")
    with open_box(home) as box:
        box.identity.add_user(OS_USER, "eng", "ml-engineer")
        token = box.identity.create_token(OS_USER, "eng", never_expires=True)[1]
    for command in ("status", "rotate", "encrypt-box"):
        refused = keys_cli(home, command, token=token)
        assert refused.returncode != 0 and "needs permission 'box.admin'" in refused.stderr, (command, refused.stderr)
    assert not crypt.box_encrypted(home)
