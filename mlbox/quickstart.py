"""`mlbox quickstart`: a fresh box from a template, then every capability end to end on bundled data."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlbox import hardware
from mlbox.box import Box
from mlbox.config import child_env, load_settings
from mlbox.doctor import run_checks
from mlbox.errors import MlboxError, UsageError
from mlbox.features.store import FeatureStore
from mlbox.project import init_project
from mlbox.serve import process as server
from mlbox.store.backup import backup_box
from mlbox.train.metrics import LOWER_IS_BETTER
from mlbox.train.runner import train
from mlbox.train.spec import TrainSpec, load_spec
from mlbox.types import Actor


@dataclass
class Step:
    name: str
    detail: str
    seconds: float


@dataclass
class Report:
    root: Path
    home: Path
    steps: list[Step] = field(default_factory=list)


Reporter = Callable[[Step], None]


def run_quickstart(root: Path, os_user: str, template: str = "tabular-classification", on_step: Reporter | None = None) -> Report:
    """Create `root`/project and `root`/backup and exercise the box; raise on the first failure."""
    root = root.resolve()
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root} is not empty; quickstart needs a new or empty folder")
    home = root / "project"
    report = Report(root, home)

    @contextmanager
    def step(name: str) -> Iterator[list[str]]:
        started = time.perf_counter()
        detail: list[str] = []
        try:
            yield detail
        except MlboxError as exc:
            raise type(exc)(f"quickstart step '{name}' failed: {exc.message}", hint=exc.hint) from exc
        done = Step(name, "; ".join(detail), time.perf_counter() - started)
        report.steps.append(done)
        if on_step:
            on_step(done)

    with step("init") as d:
        files = init_project(home, template)
        d.append(f"{template} project with {len(files)} files in {home}, its box encrypted at rest (keys/master.key)")
    box = Box.create(load_settings(home), os_user, encrypt=True)
    try:
        admin = next(u.name for u in box.identity.users() if u.role == "admin")
        box.actor = admin
        with step("doctor") as d:
            checks = run_checks(box.settings, box.paths, box.db, box.audit, hardware.detect())
            failed = [c for c in checks if c.status == "fail"]
            if failed:
                raise MlboxError(f"doctor: {failed[0].name}: {failed[0].detail}")
            gpu = next(c for c in checks if c.name == "gpu")
            d.append(f"{len(checks)} checks passed ({sum(c.status == 'warn' for c in checks)} warnings); gpu: {gpu.detail}")
        fs = box.features
        with step("features apply") as d:
            changes = fs.apply(fs.load(), admin)
            d.append(", ".join(f"{c.kind} {c.name}: {c.action}" for c in changes))
        with step("features ingest") as d:
            for v in fs.catalog.latest_views():
                result = fs.ingest(v.name, actor=admin)
                d.append(f"{v.ref} +{result.batch.row_count:,} rows")
        labels, features, label_ts = _train_data(home)
        with step("training set") as d:
            ts = fs.training_set(home / labels, features, timestamp=label_ts, out=home / "training_set.parquet", protected="raw")
            d.append(f"{ts.label_rows:,} rows × {len(ts.features)} features, fingerprint {ts.fingerprint[:16]}")
        with step("materialize") as d:
            results = fs.materialize(actor=admin)
            d.append(", ".join(f"{r.view} {r.rows:,} entities" for r in results))
        with step("online lookup") as d:
            first = fs.catalog.latest_views()[0]
            keys = first.keys
            sample = fs.sql(f"SELECT {', '.join(keys)} FROM {first.name} LIMIT 1")[1][0]
            row = fs.get_online_features([f"{first.name}:*"], [dict(zip(keys, sample, strict=True))])
            d.append(", ".join(f"{k}={v[0]}" for k, v in list(row.items())[:4]))
        with step("train") as d:
            spec = load_spec(home / box.settings["project.train"])
            challenger = _challenger(spec)
            trained = []
            for candidate in (spec, challenger):
                r = train(candidate, store=fs, tracking=box.tracking, registry=box.registry, actor=admin, register=True)
                assert r.version is not None
                trained.append(r)
                shown = ", ".join(f"{k} {v:.3f}" for k, v in list(r.metrics.items())[:2])
                d.append(f"{r.version.ref} ({candidate.flavor}{' ' + (candidate.estimator or '').rsplit('.', 1)[-1] if candidate.estimator else ''}) {shown} on {r.device}")
        with step("promote") as d:
            metric = spec.gate.metric if spec.gate else spec.metrics[0]
            lower = metric in LOWER_IS_BETTER
            best = sorted(trained, key=lambda r: r.metrics[metric], reverse=not lower)[0]
            assert best.version is not None
            box.registry.set_alias(best.version.ref, "staging", admin, expected=None)
            d.append(f"{best.version.ref} is staging (best {metric} {best.metrics[metric]:.3f})")
        with step("deploy") as d:
            primary, challenger_ref = (r.version.ref for r in trained if r.version is not None)
            box.deployments.create("churn_api", primary, admin)
            box.deployments.canary("churn_api", challenger_ref, 20, admin)
            box.deployments.shadow("churn_api", challenger_ref, admin)
            d.append(f"churn_api: primary {primary}, 20% canary {challenger_ref}, shadow {challenger_ref}")
        with step("serve") as d:
            box.identity.add_user(admin, "churn_app", "service")
            _, token = box.identity.create_token(admin, "churn_app", "service", 3600, deployments=["churn_api"])
            signature = box.registry.get(primary).signature
            inputs = [c["name"] for c in signature["columns"]]
            rows, truth = _request_rows(home / "training_set.parquet", inputs, spec.target, 400)
            shifted = _shifted(rows[200:], [c["name"] for c in signature["columns"] if c["kind"] == "numeric"])
            answers, logged = _serve_and_send(home, token, "churn_api", rows[:200] + shifted)
            counts: dict[str, int] = {}
            for a in answers:
                counts[a["variant"]] = counts.get(a["variant"], 0) + 1
            split = ", ".join(f"{v} {n} ({100 * n / len(answers):.0f}%)" for v, n in sorted(counts.items()))
            d.append(f"mlbox serve over TLS (self-signed, tls/cert.pem) answered {len(answers)} token-authenticated requests "
                     f"(the last 200 shifted): {split}; {logged} predictions logged (shadow included)")  # fmt: skip
        with step("drift check") as d:
            from mlbox.monitor.window import Window

            check = box.monitor.check("churn_api", Window.parse(last="1h"), actor=admin)
            for variant, vd in check.variants.items():
                drifted = [n for n, f in vd.features.items() if f.drifted]
                d.append(f"{variant} {vd.model}: {'DRIFT' if vd.drifted else 'no drift'} over {vd.rows} rows, "
                         f"{len(drifted)}/{len(vd.features)} features drifted ({', '.join(drifted) or 'none'})")  # fmt: skip
        with step("A/B verdict") as d:
            from mlbox.serve.labels import ingest_labels

            served_labels = home / "served_labels.csv"
            lines = ["request_id,label", *(f"{a['request_id']},{truth[i]}" for i, a in enumerate(answers))]
            served_labels.write_text("\n".join(lines) + "\n")
            matched = ingest_labels(box.db, box.audit, box.paths.predictions, "churn_api", served_labels, admin,
                                    limits=fs.offline.limits)  # fmt: skip
            ab = box.monitor.ab("churn_api", Window.parse(last="1h"), actor=admin)
            d.append(f"{matched.matched} labels matched; {ab['metric']} canary {_num(ab['canary']['value'])} vs primary "
                     f"{_num(ab['primary']['value'])} ({ab['canary']['n']} and {ab['primary']['n']} rows): {ab['verdict']}")  # fmt: skip
        with step("auth") as d:
            box.identity.add_user(admin, "analyst", "data-scientist")
            info, token = box.identity.create_token(admin, "analyst", "viewer", 3600)
            who = box.identity.authenticate(token)
            d.append(f"user analyst (data-scientist), viewer token {info.id} authenticates as {who.name}/{who.role}")
            d.extend(_masked_for(fs, who, box.settings["privacy.protected_reads"]))
        with step("privacy report") as d:
            from mlbox.privacy.report import report as privacy_report

            found = privacy_report(box)
            fields = ", ".join(f"{r['view']}:{r['field']}" for r in found["fields"]) or "none"
            held = ", ".join(_count(len(found[s]), s.replace("_", " ").rstrip("s")) for s in found if s != "fields")
            d.append(f"protected fields: {fields}; held in {held} (mlbox privacy report lists them)")
        with step("audit verify") as d:
            chain = box.audit.verify()
            if not chain.ok:
                raise MlboxError(f"audit chain broken: {chain.problem}")
            d.append(f"{chain.checked} entries, chain intact")
        with step("backup") as d:
            b = backup_box(home, root / "backup")
            box.audit.record(admin, "box.backup", str(b.dest), {"files": b.files})
            d.append(f"{b.files} files, {b.bytes / 1e6:.1f} MB to {b.dest}")
        with step("erasure") as d:
            from mlbox.privacy import certificate
            from mlbox.privacy.erase import erase

            subject = {k: str(v) for k, v in zip(keys, sample, strict=True)}  # the customer looked up online
            named = ", ".join(f"{k}={v}" for k, v in subject.items())
            dry = erase(box, subject, actor=admin, dry_run=True)["payload"]["totals"]
            d.append(f"dry run for {named}: {dry['offline_rows']} offline rows, {dry['online_rows']} online rows, "
                     f"{dry['source_file_rows']} rows of project files")  # fmt: skip
            document = erase(box, subject, actor=admin)
            payload = certificate.verify(document, document["payload"]["public_key"]["fingerprint_sha256"])
            cert = certificate.write(root / "erasure-certificate.json", document, subject)
            d.append(f"erased; certificate {cert.name} (Ed25519 {payload['public_key']['fingerprint_sha256'][:16]}, verifies): "
                     f"{_count(len(payload['models_to_review']), 'model version')} to review, "
                     f"{_count(len(payload['out_of_reach']), 'backup')} out of reach")  # fmt: skip
        with step("encryption") as d:
            d.append(_at_rest(home))
            d.append(_encryption_cost(root / "encryption-cost"))
    finally:
        box.close()
    return report


def _at_rest(home: Path) -> str:
    """Which of the box's files are encrypted, and proof that a batch copied out of it opens for nobody."""
    import pyarrow.parquet as pq

    from mlbox.bench.encryption_ops import at_rest

    stores = at_rest(home)
    encrypted = sum(e for e, _ in stores.values())
    total = sum(n for _, n in stores.values())
    batch = next((home / "features").rglob("*.parquet"))
    try:
        pq.read_table(batch)  # what anyone holding a copy of the file, but not the key, would try
        refused = "a copied batch OPENED without the key"
    except OSError:
        refused = "a batch copied out of the box opens only with the key"
    shown = ", ".join(f"{name} {e}/{n}" for name, (e, n) in stores.items())
    return f"{encrypted}/{total} files encrypted ({shown}); {refused}"


def _encryption_cost(work: Path) -> str:
    """What encryption costs, measured now on twin plain and encrypted boxes (small: `mlbox bench encryption` for the table)."""
    import shutil

    from mlbox.bench.encryption import TINY, measure
    from mlbox.bench.report import Recorder

    try:
        compared = measure(work, TINY, Recorder(None, None), serving=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    short = {"ingest": "ingest", "training": "training set", "materialize": "materialize", "online": "online lookup",
             "model": "model load", "prediction": "log flush"}  # fmt: skip
    parts = []
    for c in compared:
        ratio = c.row().ratio
        label = short.get(c.name.split()[0], c.name.split(",")[0])
        parts.append(f"{label} {ratio:.2f}x" if ratio else f"{label} n/a")
    return f"cost vs a plain twin box, same run, medians of {TINY.rounds}: {', '.join(parts)} (mlbox bench encryption: full table)"


def _masked_for(fs: FeatureStore, who: Actor, setting: str) -> list[str]:
    """One protected (pii or restricted) field as `features sql` shows it to `who`, and as an admin sees it."""
    from mlbox.features.privacy import protected
    from mlbox.features.pit import q
    from mlbox.security.roles import disclosure

    for version in fs.catalog.latest_views():
        hidden = protected(version)
        if hidden:
            name = next(iter(hidden))
            sql = f"SELECT {q(name)} FROM {q(version.name)} WHERE {q(name)} IS NOT NULL LIMIT 1"
            raw = fs.sql(sql, protected="raw")[1]
            seen = fs.sql(sql, protected=disclosure(who, setting))[1]
            if raw and seen:
                return [f"{version.name}.{name} is protected: an admin reads {raw[0][0]!r}, the {who.role} reads {seen[0][0]!r}"]
    return ["no protected fields in this project"]


def _challenger(spec: TrainSpec) -> TrainSpec:
    """A second candidate on the same data: a scikit-learn pipeline (scaling + one-hot) with a linear model."""
    estimator = "sklearn.linear_model.LogisticRegression" if spec.task == "classification" else "sklearn.linear_model.Ridge"
    params = {"max_iter": 1000} if spec.task == "classification" else {}
    return replace(spec, flavor="sklearn", estimator=estimator, preprocess=True, params=params, device="cpu")


def _request_rows(path: Path, columns: list[str], target: str, n: int) -> tuple[list[dict[str, object]], list[object]]:
    """The model's input columns of the first `n` training-set rows, as a client would send them, and their labels."""
    import pandas as pd

    frame = pd.read_parquet(path, columns=[*columns, target]).head(n)
    records: list[dict[str, object]] = json.loads(frame[columns].to_json(orient="records"))
    return records, frame[target].tolist()


def _shifted(rows: list[dict[str, object]], columns: list[str]) -> list[dict[str, object]]:
    """`rows` with each of `columns` moved up by one standard deviation: traffic a drift check must flag."""
    import numpy as np

    out = [dict(r) for r in rows]
    for column in columns:
        values = np.array([r[column] for r in rows if isinstance(r.get(column), (int, float))], dtype=np.float64)
        sd = float(values.std()) if values.size else 0.0
        for r in out:
            if isinstance(r.get(column), (int, float)):
                r[column] = float(r[column]) + sd  # type: ignore[arg-type]
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _serve_and_send(home: Path, token: str, deployment: str, rows: list[dict[str, object]]) -> tuple[list[dict[str, str]], int]:
    """Start `mlbox serve` over TLS (a self-signed trial certificate) on a free loopback port, send one request
    per row with the token, stop it; (each answer's variant and request id, rows logged)."""
    import ssl

    from mlbox import clock
    from mlbox.security.certs import generate_selfsigned

    tls = generate_selfsigned(home / "tls", ["localhost", "127.0.0.1"], 30, clock.now(), force=True)
    port = server.free_port()
    env = child_env(drop=("MLBOX_TOKEN",), MLBOX_HOME=str(home))
    cmd = [sys.executable, "-m", "mlbox", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]  # fmt: skip
    proc = server.start(cmd, env, port, home / "logs" / "quickstart-serve.log", cafile=tls.cert)
    base = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(tls.cert))
    answers: list[dict[str, str]] = []
    try:
        for row in rows:
            req = urllib.request.Request(
                f"{base}/v1/deployments/{deployment}/predict",
                data=json.dumps({"rows": [row]}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10, context=trusted) as r:
                    answer = json.loads(r.read())
            except urllib.error.HTTPError as exc:
                raise MlboxError(f"mlbox serve answered {exc.code}: {exc.read().decode()[:300]}") from None
            answers.append({"variant": answer["variant"], "request_id": answer["request_id"]})
    finally:
        server.stop(proc)
    with Box(load_settings(home)) as box:
        logged = int(box.db.scalar("SELECT coalesce(sum(rows), 0) FROM prediction_batches WHERE deployment = ?", (deployment,)))
    return answers, logged


def _train_data(home: Path) -> tuple[str, list[str], str | None]:
    """The labels file, feature references and label timestamp column named by the project's training spec."""
    import yaml

    spec = yaml.safe_load((home / "train.yaml").read_text()) or {}
    data = spec.get("data") or {}
    if not data.get("labels") or not data.get("features"):
        raise UsageError(f"{home / 'train.yaml'} names no data.labels and data.features")
    timestamp = data.get("timestamp")
    return str(data["labels"]), [str(f) for f in data["features"]], str(timestamp) if timestamp else None
