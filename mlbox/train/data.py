"""Training data: a point-in-time training set from the feature store, or a plain file; and splits."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlbox.errors import UsageError, ValidationError
from mlbox.features.store import FeatureStore
from mlbox.store import crypt
from mlbox.store.artifacts import file_sha256
from mlbox.train.spec import SplitSpec, TrainSpec


@dataclass
class TrainingData:
    """The rows a spec trains on, which columns are features, and where they came from (fingerprint, lineage)."""

    frame: pd.DataFrame
    features: list[str]
    timestamp: str | None
    fingerprint: str
    feature_views: list[str] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    snapshot: int | None = None
    source: str = ""
    feature_refs: dict[str, str] = field(default_factory=dict)  # column -> "view@version:field"
    purged: list[str] = field(default_factory=list)  # what retention had removed from the views read, as the training set states it


def load(spec: TrainSpec, store: FeatureStore | None, actor: str) -> TrainingData:
    """The frame a spec names, with its fingerprint and lineage."""
    d = spec.data
    if d.labels:
        if store is None:
            raise UsageError("this spec reads from the feature store, but no box is open")
        # raw: a model learns from real values (like predictions, which read them raw); exports mask them
        ts = store.training_set(
            spec.base_dir / d.labels, list(d.features), d.snapshot, timestamp=d.timestamp, actor=actor, protected="raw"
        )
        frame = ts.frame
        label_cols = [c for c in frame.columns if c not in ts.columns]
        timestamp = d.timestamp or next((c for c in label_cols if pd.api.types.is_datetime64_any_dtype(frame[c])), None)
        features = [c for c in ts.columns if c not in d.drop]
        out = TrainingData(
            frame, features, timestamp, ts.fingerprint, ts.views, ts.batches, ts.snapshot, str(d.labels), dict(ts.columns),
            list(ts.purged),
        )
    else:
        path = spec.base_dir / str(d.path)
        if not path.is_file():
            raise UsageError(f"data file {path} not found")
        # The fingerprint hashes the whole file; hashlib and file reads release the GIL, so it
        # runs next to the parse instead of after it (about a third of loading 1M rows).
        with ThreadPoolExecutor(1) as pool:
            digest = pool.submit(file_sha256, path)
            frame = read_file(path)
            fingerprint = digest.result()
        timestamp = spec.split.timestamp
        if timestamp and timestamp in frame:
            frame[timestamp] = pd.to_datetime(frame[timestamp], utc=True)
        skip = {spec.target, *d.drop, *([timestamp] if timestamp else [])}
        features = [c for c in frame.columns if c not in skip]
        out = TrainingData(frame, features, timestamp, fingerprint, source=str(path))
    if spec.target not in out.frame.columns:
        raise ValidationError(f"target column {spec.target!r} is not in the training data", hint=f"columns: {', '.join(out.frame.columns)}")
    unknown_drop = [c for c in d.drop if c not in out.frame.columns]
    if unknown_drop:
        raise ValidationError(f"data.drop names unknown column(s) {', '.join(unknown_drop)}")
    out.features = [c for c in out.features if c != spec.target]
    if not out.features:
        raise ValidationError("no feature columns left to train on")
    if len(out.frame) < 10:
        raise ValidationError(f"only {len(out.frame)} training rows; need at least 10")
    return out


def read_file(path: Path) -> pd.DataFrame:
    """A plain data file as a frame: Parquet, CSV or TSV."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        if crypt.is_encrypted(path):  # a file of an encrypted box, read through its key
            return crypt.read_table(path).to_pandas(split_blocks=True)
        # one block per column: no copy of every float column into one 2-D block (encode reads columns)
        return pd.read_parquet(path, to_pandas_kwargs={"split_blocks": True})
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise UsageError(f"cannot read {path.name}: use .csv, .tsv or .parquet")


@dataclass(frozen=True)
class Split:
    """Row indices of one split: train, validation (for early stopping; may be None) and test."""

    train: np.ndarray  # row indices
    valid: np.ndarray | None
    test: np.ndarray


def split(data: TrainingData, s: SplitSpec, seed: int) -> list[Split]:
    """Holdout by time or at random (one split), or k folds."""
    n = len(data.frame)
    rng = np.random.default_rng(seed)
    if s.method == "kfold":
        order = rng.permutation(n)
        folds = np.array_split(order, s.folds)
        out = []
        for i, test in enumerate(folds):
            rest = np.concatenate([f for j, f in enumerate(folds) if j != i])
            out.append(_carve(rest, s.valid_size, rng, ordered=False, test=test))
        return out
    if s.method == "time":
        if not data.timestamp:
            raise UsageError("split.method time needs a timestamp column", hint="set data.timestamp or split.timestamp")
        order = np.argsort(data.frame[data.timestamp].to_numpy(), kind="stable")
    else:
        order = rng.permutation(n)
    cut = n - max(1, int(round(n * s.test_size)))
    return [_carve(order[:cut], s.valid_size, rng, ordered=s.method == "time", test=order[cut:])]


def _carve(train: np.ndarray, valid_size: float, rng: Any, ordered: bool, test: np.ndarray) -> Split:
    if valid_size <= 0 or len(train) < 20:
        return Split(train, None, test)
    k = max(1, int(round(len(train) * valid_size)))
    if not ordered:
        train = rng.permutation(train)
    return Split(np.sort(train[:-k]), np.sort(train[-k:]), np.sort(test))
