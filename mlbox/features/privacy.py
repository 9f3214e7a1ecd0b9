"""Enforced classification in the feature store: which fields are protected, and how a read hides them.

A field is *protected* when it is tagged `pii` or classified `restricted` (its own tag, else its
view's). A read is made with a *disclosure*: "raw" (the caller holds `features.read_pii`, or it is
mlbox itself feeding a model), "mask" (strings read "***", other values null; columns keep their
names and types, so schemas do not change) or "refuse" (PermissionDenied naming the field).
Interfaces decide the disclosure from the actor's role and `privacy.protected_reads`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from mlbox.errors import PermissionDenied, UsageError
from mlbox.features.catalog import Catalog, ViewVersion
from mlbox.features.definitions import DTYPES, FeatureView, Field
from mlbox.features.pit import lit, q
from mlbox.store import crypt

Disclosure = Literal["raw", "mask", "refuse"]
DISCLOSURES: tuple[str, ...] = ("raw", "mask", "refuse")
READ_PII = "features.read_pii"  # the permission (mlbox.security.roles) that reads protected values raw
MASK = "***"
REFUSED = "mlbox-protected:"  # prefix of the DuckDB error a refused column raises when a query reads it


def check_disclosure(value: str) -> Disclosure:
    if value not in DISCLOSURES:
        raise UsageError(f"unknown disclosure {value!r}", hint=f"use one of {', '.join(DISCLOSURES)}")
    return cast(Disclosure, value)


def is_protected(view: FeatureView, f: Field) -> bool:
    return view.field_pii(f) or view.field_classification(f) == "restricted"


def protected(version: ViewVersion) -> dict[str, str]:
    """Protected fields of a view version: name -> dtype, in field order."""
    return {f.name: f.dtype for f in version.view.fields if is_protected(version.view, f)}


def refusal(ref: str, field: str) -> PermissionDenied:
    return PermissionDenied(
        f"{ref}:{field} is a protected field (pii or restricted); reading it needs permission '{READ_PII}'",
        hint="leave the field out, or ask an admin (privacy.protected_reads=mask would mask it instead)",
    )


def masked_value(dtype: str) -> Any:
    return MASK if dtype == "string" else None


# online reads -------------------------------------------------------------------------------------
def online_hidden(catalog: Catalog, lookups: Iterable[tuple[Any, Sequence[str], Any, str]], disclosure: str) -> dict[str, str]:
    """The protected columns among an online plan's (lookup, names, key types, "view@version") entries:
    name -> dtype to mask; raises the refusal when `disclosure` is "refuse"."""
    hidden: dict[str, str] = {}
    for _lookup, names, _keys, ref in lookups:
        name, _, ver = ref.partition("@")
        guarded = protected(catalog.view(name, int(ver)))
        for n in names:
            if n in guarded:
                if disclosure == "refuse":
                    raise refusal(ref, n)
                hidden[n] = guarded[n]
    return hidden


def mask_columns(result: dict[str, list[Any]], hidden: Mapping[str, str]) -> None:
    """Mask columnar values in place: a found value becomes the mask, a missing one stays None."""
    for name, dtype in hidden.items():
        if name in result:
            result[name] = [None if v is None else masked_value(dtype) for v in result[name]]


# features sql ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskedRelation:
    """One view version as `features sql` shows it to a reader without `features.read_pii`."""

    data_name: str  # the registered Arrow dataset, protected columns absent from its schema
    dataset: Any  # pyarrow.dataset.Dataset
    select: str  # the user-facing view's body: the dataset plus masked constants, in column order


def masked_relation(version: ViewVersion, files: Sequence[Path], disclosure: str) -> MaskedRelation | None:
    """A relation over `files` that cannot reach a protected value; None when the version has no files.

    DuckDB scans the dataset through Arrow, not its own file system, so the connection keeps
    `enable_external_access=false` with no allowed path: neither `read_parquet` of a batch,
    nor `glob`, nor the dataset's registered name reaches a protected column's bytes. The
    dataset decrypts in an encrypted box (`crypt.dataset`).
    """
    if not files:
        return None
    import pyarrow as pa

    sources = [str(p) for p in files]
    full = crypt.dataset(sources).schema  # the first file's footer
    guarded = protected(version)
    kept = pa.schema([f for f in full if f.name not in guarded])
    data_name = f"__data_{version.name}_v{version.version}"
    columns = []
    for f in full:
        if f.name not in guarded:
            columns.append(q(f.name))
            continue
        dtype = guarded[f.name]
        if disclosure == "refuse":
            value = f"error({lit(REFUSED + version.ref + ':' + f.name)})::{DTYPES[dtype]}"
        else:
            value = f"{lit(MASK)}::VARCHAR" if dtype == "string" else f"NULL::{DTYPES[dtype]}"
        columns.append(f"{value} AS {q(f.name)}")
    return MaskedRelation(
        data_name=data_name,
        dataset=crypt.dataset(sources, schema=kept),
        select=f"SELECT {', '.join(columns)} FROM {q(data_name)}",
    )


def refused_column(message: str) -> PermissionDenied | None:
    """The refusal a failed `features sql` query stands for, when a refused column raised it."""
    if REFUSED not in message:
        return None
    ref, _, field = message.split(REFUSED, 1)[1].split()[0].rpartition(":")
    return refusal(ref, field)


# training-set exports --------------------------------------------------------------------------------
def export_hidden(catalog: Catalog, columns: Mapping[str, str], disclosure: str) -> dict[str, str]:
    """Output columns of a training set ({column: "view@version:field"}) that are protected: column -> dtype."""
    hidden: dict[str, str] = {}
    for column, ref in columns.items():
        view_ref, _, field = ref.rpartition(":")
        name, _, ver = view_ref.partition("@")
        guarded = protected(catalog.view(name, int(ver)))
        if field in guarded:
            if disclosure == "refuse":
                raise refusal(view_ref, field)
            hidden[column] = guarded[field]
    return hidden


def mask_table(table: Any, hidden: Mapping[str, str]) -> Any:
    """A pyarrow Table with the `hidden` columns masked (same names, types and positions)."""
    import pyarrow as pa

    for name, dtype in hidden.items():
        i = table.schema.get_field_index(name)
        if i < 0:
            continue
        kind = table.schema.field(i).type
        column = pa.array([MASK] * table.num_rows, kind) if dtype == "string" else pa.nulls(table.num_rows, kind)
        table = table.set_column(i, table.schema.field(i), column)
    return table


# where personal data lives ------------------------------------------------------------------------------
def locations(catalog: Catalog, online_tables: Mapping[str, int]) -> dict[str, list[dict[str, Any]]]:
    """Protected view fields, the online tables holding them ({table: rows} of those that exist) and the
    recorded training sets that include them."""
    from mlbox.features.online import table_name

    fields, tables, guarded_refs = [], [], set()
    for v in catalog.versions():
        guarded = protected(v)
        for f in v.view.fields:
            if f.name in guarded:
                fields.append(
                    {
                        "view": v.ref,
                        "field": f.name,
                        "dtype": f.dtype,
                        "pii": v.view.field_pii(f),
                        "classification": v.view.field_classification(f),
                    }
                )
                guarded_refs.add(f"{v.ref}:{f.name}")
        name = table_name(v)
        if guarded and name in online_tables:
            tables.append({"view": v.ref, "table": f"online.db:{name}", "fields": list(guarded), "rows": online_tables[name]})
    sets = []
    for row in catalog.db.query("SELECT fingerprint, snapshot, features, label_rows, created_at, created_by FROM training_sets ORDER BY created_at"):
        used = [r for r in json.loads(row["features"]) if r in guarded_refs]
        if used:
            sets.append(
                {
                    "fingerprint": row["fingerprint"],
                    "snapshot": row["snapshot"],
                    "fields": used,
                    "rows": row["label_rows"],
                    "created_at": row["created_at"],
                    "created_by": row["created_by"],
                }
            )
    return {"fields": fields, "online_tables": tables, "training_sets": sets}


def restrict_training_set(result: Any, catalog: Catalog, disclosure: str, target: Path | None) -> Any:
    """Apply a non-raw disclosure to a built training set: refuse it, or mask its frame or its file.

    A file set was built at a staging path inside the box (`result.path`); the masked copy is
    written to `target` through a temporary name, so no raw protected value lands outside the box.
    The staged file is encrypted in an encrypted box: it is then read through its key and written
    again under `target`'s rule (encrypted in a box's stores, else plain: an export), never moved as is.
    """
    import pyarrow as pa

    hidden = export_hidden(catalog, result.columns, disclosure)
    if result.path is not None and target is not None:
        tmp = target.with_name(f".{target.name}.tmp")
        target.parent.mkdir(parents=True, exist_ok=True)
        if hidden or crypt.is_encrypted(result.path):
            source = crypt.parquet_file(result.path)
            writer = crypt.parquet_writer(tmp, source.schema_arrow, compression="snappy")
            try:
                for batch in source.iter_batches(batch_size=65536):  # streamed: a training set may not fit in memory twice
                    writer.write_table(mask_table(pa.Table.from_batches([batch], source.schema_arrow), hidden))
            finally:
                writer.close()
        else:  # nothing to mask: move the staged file (a rename when the box and `target` share a file system)
            shutil.move(result.path, tmp)
        tmp.replace(target)
        result.path = target
    elif result.frame is not None and hidden:
        frame = result.frame
        if isinstance(frame, pa.Table):
            result.frame = mask_table(frame, hidden)
        else:
            keep = frame.index.to_series().map(lambda _: False)
            for column, dtype in hidden.items():
                frame[column] = frame[column].where(keep, MASK) if dtype == "string" else frame[column].where(keep)
    return result


VALUE_FREE_STATS = ("dtype", "count", "nulls", "distinct")  # a protected field's statistics keep only counts


def mask_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A protected field's batch statistics without values (no top values, range, moments or quantiles)."""
    return {**{k: stats[k] for k in VALUE_FREE_STATS if k in stats}, "masked": True}
