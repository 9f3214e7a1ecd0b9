"""A real box from templates/tabular-classification with one planted data subject in every store.

The subject (customer `KEY`, email `EMAIL`, both unique) has a profile row, usage rows and a label
row in the project's data files; the box ingests, materializes, builds a training set (written to
a file inside the box, as quickstart does), trains and registers an xgboost model, logs entity
predictions through the real prediction-log writer (one request of the subject alone, one
multi-row request shared with another customer, and requests of others) and ingests labels for
every request (from a file inside the box, as quickstart does). A backup is made outside the box (out of erasure's reach).
`build(..., encrypt=True)` makes the same box encrypted at rest (its keyring made before any database
exists); `scan` then reads every file decrypted: encrypted Parquet and sealed files through
mlbox.store.crypt, and every page of a SQLCipher database and its WAL, free pages included.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import yaml

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.flavors.signature import Signature
from mlbox.project import init_project
from mlbox.serve.labels import ingest_labels
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.store import crypt
from mlbox.store.backup import backup_box
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from ..conftest import OS_USER

KEY = 7_346_915_822_345_617  # above 2^47: SQLite stores it as 8 bytes, Parquet as int64
EMAIL = "erase.me.q7x3z9@subject.example"
OTHER = 1001  # a customer of the template, whose data must stay
FAST_XGB = {"n_estimators": 10, "max_depth": 3, "learning_rate": 0.3}


def open_box(home: Path, *, encrypt: bool = False) -> Box:
    box = Box.create(load_settings(home, environ={}), OS_USER, encrypt=encrypt)
    box.actor = OS_USER
    return box


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open(newline="") as fh:
        header = next(csv.reader(fh))
    with path.open("a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow([row[c] for c in header])


def _first(path: Path, column: str) -> str:
    with path.open(newline="") as fh:
        return str(next(csv.DictReader(fh))[column])


def plant(home: Path) -> None:
    data = home / "data"
    when = _first(data / "customers.csv", "updated_at")
    _append(data / "customers.csv", {"customer_id": KEY, "updated_at": when, "age": 41, "plan": "premium",
                                     "region": "dubai", "monthly_charges": 99.5, "email": EMAIL})  # fmt: skip
    for ts in sorted({_first(data / "usage.csv", "event_ts")}):
        _append(data / "usage.csv", {"customer_id": KEY, "event_ts": ts, "calls": 12, "data_gb": 3.5, "support_tickets": 1,
                                     "late_payments": 0})  # fmt: skip
    _append(data / "labels.csv", {"customer_id": KEY, "event_ts": _first(data / "labels.csv", "event_ts"), "churned": 1})


def log_predictions(box: Box, model: str) -> list[str]:
    """Entity requests through the real writer (typed columns from the model's signature); their request ids."""
    signature = Signature.from_dict(box.registry.get(model).signature)
    names = [c.name for c in signature.columns]
    fs = box.features
    features = [f"customer_profile:{n}" for n in names if n in ("age", "plan", "region", "monthly_charges")]
    features += [f"usage:{n}" for n in names if n not in ("age", "plan", "region", "monthly_charges")]

    def inputs(keys: list[int]) -> str:
        got = fs.get_online_features(features, [{"customer_id": k} for k in keys])
        return orjson.dumps([{n: got[n][i] for n in names} for i in range(len(keys))]).decode()

    log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600, signature_of=lambda _r: signature)
    now = time.time()
    requests = [[KEY], [OTHER, KEY], [OTHER], [1002]]
    ids = []
    for i, keys in enumerate(requests):
        rid = f"req-{i}"
        ids.append(rid)
        entity = orjson.dumps([{"customer_id": k} for k in keys]).decode()
        outputs = orjson.dumps([{str(c): 0.5 for c in signature.classes} for _ in keys]).decode()
        log.append(Record(now + i, rid, "churn_api", model, "primary", False, 1.5, entity, inputs(keys), outputs, None))
    log.flush()
    log.close()
    return ids


def build(home: Path, backups: Path, *, encrypt: bool = False) -> dict[str, Any]:
    """The box described in the module docstring; what the tests need to know about it."""
    init_project(home, "tabular-classification")
    plant(home)
    with open_box(home, encrypt=encrypt) as box:
        fs = box.features
        fs.apply(fs.load(), OS_USER)
        for view in fs.catalog.latest_views():
            fs.ingest(view.name, actor=OS_USER)
        fs.materialize(actor=OS_USER)
        raw = yaml.safe_load((home / "train.yaml").read_text())
        raw.update(params=FAST_XGB, model="churn_fs", device="cpu")
        raw.pop("gate", None)
        spec = parse_spec(raw, "train.yaml", home)
        fs.training_set(home / "data" / "labels.csv", list(spec.data.features), timestamp="event_ts",
                        out=home / "training_set.parquet", protected="raw")  # fmt: skip
        trained = train(spec, store=fs, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)
        assert trained.version is not None
        ids = log_predictions(box, trained.version.ref)
        labels = home / "served_labels.csv"  # inside the box, as quickstart writes it
        labels.write_text("request_id,label\n" + "".join(f"{r},1\n" for r in ids))
        ingest_labels(box.db, box.audit, box.paths.predictions, "churn_api", labels, OS_USER)
        report = backup_box(home, backups)
        box.audit.record(OS_USER, "box.backup", str(report.dest), {"files": report.files})
        return {"model": trained.version.ref, "snapshot": fs.snapshot(), "request_ids": ids}


NEEDLES = (EMAIL.encode(), str(KEY).encode(), KEY.to_bytes(8, "little", signed=True), KEY.to_bytes(8, "big", signed=True))


def _parquet_values(path: Path) -> list[str]:
    """Every value of a Parquet file as text (compression can hide a value from a byte scan); decrypted."""
    table = crypt.read_table(path)
    out: list[str] = []
    for column in table.columns:
        if pa.types.is_nested(column.type):
            out += [str(v) for v in column.to_pylist()]
        else:
            out += [str(v) for v in column.to_pylist() if v is not None]
    return out


SQLITE_MAGIC = b"SQLite format 3\x00"
RESERVE = 80  # SQLCipher 4's bytes at each page's end: 16 of IV, 64 of HMAC-SHA512
SALT = 16  # page 1 starts with the file's salt, where a plain file has the magic


def _page(key: bytes, page: bytes, first: bool) -> bytes:
    """One SQLCipher page decrypted (AES-256-CBC, IV in the reserved tail); page 1 without its salt."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    body, iv = page[SALT if first else 0 : len(page) - RESERVE], page[len(page) - RESERVE : len(page) - RESERVE + 16]
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(body) + decryptor.finalize()


def _page_key(path: Path, keyring: crypt.Keyring) -> tuple[bytes, int] | None:
    """(the key that decrypts this SQLCipher file's page 1, its page size), found by the header it must hold."""
    main = path.with_name(path.name.removesuffix("-wal"))
    data = main.read_bytes()[:65536] if main.is_file() else b""
    for key_id in keyring.ids:
        key = keyring.key(key_id)
        for size in (4096, 1024, 2048, 8192, 16384, 32768, 65536):
            if len(data) >= size:
                head = _page(key, data[:size], True)  # the header from byte 16: page size, reserve, 64/32/32
                stored = int.from_bytes(head[:2], "big")
                if (65536 if stored == 1 else stored) == size and head[4] == RESERVE and head[5:8] == b"\x40\x20\x20":
                    return key, size
    return None


def sqlcipher_plaintext(path: Path, keyring: crypt.Keyring) -> bytes:
    """Every page of an encrypted meta.db/online.db (or every frame of its WAL), decrypted: what SQLite sees."""
    found = _page_key(path, keyring)
    data = path.read_bytes()
    if found is None:
        raise AssertionError(f"{path} is neither plain SQLite nor decryptable with the box's keyring")
    key, size = found
    if path.name.endswith("-wal"):  # a 32-byte header, then frames: 24-byte header (page number first) + page
        frames = range(32, len(data) - size - 24 + 1, size + 24)
        return b"".join(_page(key, data[f + 24 : f + 24 + size], int.from_bytes(data[f : f + 4], "big") == 1) for f in frames)
    return b"".join(_page(key, data[o : o + size], o == 0) for o in range(0, len(data) - size + 1, size))


def _encrypted_sqlite(path: Path) -> bool:
    if not path.name.endswith((".db", ".db-wal")) or path.stat().st_size == 0:
        return False
    if path.name.endswith("-wal"):
        main = path.with_name(path.name.removesuffix("-wal"))
        return main.is_file() and not main.read_bytes()[:16] == SQLITE_MAGIC
    return path.read_bytes()[:16] != SQLITE_MAGIC


def scan(home: Path, *, decrypt: bool = True) -> dict[str, list[str]]:
    """Every file under `home` holding the subject's email or key: raw bytes (SQLite pages, WAL, text, artifacts)
    and, for Parquet, every decoded value too. {relative path: what was found}.

    In an encrypted box each file is also read decrypted (unless `decrypt` is false, which shows what the
    bytes at rest give away): Parquet and sealed files through the box's keyring, SQLCipher databases
    page by page. A file the keyring cannot decrypt fails the scan rather than passing unread.
    """
    found: dict[str, list[str]] = {}
    keyring = crypt.keyring_for(home / "meta.db")
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if decrypt and keyring is not None:
            if _encrypted_sqlite(path):
                data += sqlcipher_plaintext(path, keyring)
            elif crypt.is_encrypted(path) and path.suffix != ".parquet":
                data += crypt.read_bytes(path)
        hits = [n.hex() if not n.isascii() else n.decode() for n in NEEDLES if n in data]
        if path.suffix == ".parquet" and not path.name.startswith(".tmp") and (decrypt or not crypt.is_encrypted(path)):
            values = _parquet_values(path)
            hits += [f"value {v}" for v in (EMAIL, str(KEY)) if any(v in x for x in values)]
        if hits:
            found[str(path.relative_to(home))] = hits
    return found
