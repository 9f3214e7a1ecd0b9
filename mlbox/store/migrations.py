"""Named, recorded schema migrations for meta.db.

Each migration runs once, in order, inside one transaction together with the row that
records it. A box whose meta.db records a migration this mlbox does not know was made by
a newer mlbox and is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlbox import clock
from mlbox.errors import StoreError
from mlbox.store.sqlite import Database


@dataclass(frozen=True)
class Migration:
    name: str
    apply: Callable[[Database], None]


def _sql(script: str) -> Callable[[Database], None]:
    def apply(db: Database) -> None:
        for statement in script.split(";\n"):
            if statement.strip():
                db.execute(statement)

    return apply


CORE = """
CREATE TABLE box_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin','ml-engineer','data-scientist','viewer','service')),
    os_user TEXT UNIQUE,
    created_at TEXT NOT NULL,
    disabled_at TEXT
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    role TEXT NOT NULL CHECK (role IN ('admin','ml-engineer','data-scientist','viewer','service')),
    secret_hash TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    last_used_at TEXT
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_action ON audit(action);
CREATE INDEX audit_target ON audit(target);
CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL, mac TEXT NOT NULL);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
"""

FEATURES = """
CREATE TABLE catalog_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO catalog_counter (id, value) VALUES (1, 0);
CREATE TABLE entities (
    name TEXT PRIMARY KEY,
    join_keys TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE TABLE feature_views (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    entity TEXT NOT NULL REFERENCES entities(name),
    definition TEXT NOT NULL,
    definition_hash TEXT NOT NULL,
    commit_seq INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE feature_view_definitions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    commit_seq INTEGER NOT NULL,
    definition TEXT NOT NULL,
    PRIMARY KEY (name, version, commit_seq),
    FOREIGN KEY (name, version) REFERENCES feature_views(name, version)
);
CREATE TABLE feature_batches (
    id INTEGER PRIMARY KEY,
    view TEXT NOT NULL,
    version INTEGER NOT NULL,
    commit_seq INTEGER NOT NULL UNIQUE,
    path TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    min_ts TEXT,
    max_ts TEXT,
    sha256 TEXT NOT NULL,
    stats TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    FOREIGN KEY (view, version) REFERENCES feature_views(name, version)
);
CREATE INDEX feature_batches_view ON feature_batches(view, version, id);
CREATE TABLE materializations (
    id INTEGER PRIMARY KEY,
    view TEXT NOT NULL,
    version INTEGER NOT NULL,
    through_seq INTEGER NOT NULL,
    mode TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    FOREIGN KEY (view, version) REFERENCES feature_views(name, version)
);
CREATE TABLE training_sets (
    fingerprint TEXT PRIMARY KEY,
    snapshot INTEGER NOT NULL,
    features TEXT NOT NULL,
    batches TEXT NOT NULL,
    label_rows INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
)
"""

TRACKING = """
CREATE TABLE experiments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
    user TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    duration_s REAL,
    device TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '{}',
    environment TEXT NOT NULL DEFAULT '{}',
    env_hash TEXT,
    code_rev TEXT,
    code_dirty INTEGER,
    dataset_fingerprint TEXT,
    feature_views TEXT NOT NULL DEFAULT '[]',
    error TEXT
);
CREATE INDEX runs_experiment ON runs(experiment_id, started_at);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL,
    ts REAL NOT NULL
);
CREATE INDEX metrics_run_key ON metrics(run_id, key, step);
CREATE TABLE run_artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE models (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE model_versions (
    name TEXT NOT NULL REFERENCES models(name),
    version INTEGER NOT NULL,
    run_id TEXT REFERENCES runs(id),
    flavor TEXT NOT NULL,
    task TEXT NOT NULL,
    signature TEXT NOT NULL,
    reference_stats TEXT NOT NULL,
    metrics TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    lineage TEXT NOT NULL,
    onnx_max_abs_diff REAL,
    onnx_tolerance REAL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    archived_at TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE model_aliases (
    name TEXT NOT NULL REFERENCES models(name),
    alias TEXT NOT NULL CHECK (alias IN ('staging', 'production')),
    version INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES model_versions(name, version)
)
"""

SERVING = """
CREATE TABLE deployments (
    name TEXT PRIMARY KEY,
    primary_model TEXT NOT NULL,
    canary_model TEXT,
    canary_weight REAL NOT NULL DEFAULT 0 CHECK (canary_weight >= 0 AND canary_weight <= 100),
    sticky_key TEXT,
    shadow_model TEXT,
    previous_primary TEXT,
    revision INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE prediction_batches (
    id INTEGER PRIMARY KEY,
    deployment TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    rows INTEGER NOT NULL,
    min_ts TEXT NOT NULL,
    max_ts TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX prediction_batches_deployment ON prediction_batches(deployment, id);
CREATE TABLE label_batches (
    id INTEGER PRIMARY KEY,
    deployment TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    rows INTEGER NOT NULL,
    matched INTEGER NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
)
"""

JOBS = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL CHECK (type IN ('train', 'materialize', 'monitor', 'retention', 'command')),
    payload TEXT NOT NULL,
    project TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    gpus INTEGER NOT NULL DEFAULT 0,
    gpu_memory_mb INTEGER NOT NULL DEFAULT 0,
    cpus REAL NOT NULL DEFAULT 1,
    memory_mb INTEGER NOT NULL DEFAULT 0,
    timeout_s INTEGER NOT NULL DEFAULT 3600,
    cpu_fallback INTEGER NOT NULL DEFAULT 1,
    wait_gpu_s INTEGER NOT NULL DEFAULT 600,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    submitted_at REAL NOT NULL,
    submitted_by TEXT NOT NULL,
    started_at REAL,
    ended_at REAL,
    worker TEXT,
    lease_until REAL,
    pid INTEGER,
    devices TEXT,
    exit_code INTEGER,
    error TEXT,
    log_path TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_status ON jobs(status, priority, submitted_at);
CREATE TABLE job_quotas (
    project TEXT PRIMARY KEY,
    max_running INTEGER,
    max_gpus INTEGER
)
"""

# A run records the process that runs it (pid, its start time, host) so a run whose process
# died can be marked `killed`; the status CHECK gains 'killed'. SQLite cannot alter a CHECK,
# so the table is rebuilt: with foreign keys deferred, dropping `runs` counts its children's
# rows as violations and inserting the same ids again counts them back before the commit.
RUN_PROCESS = """
PRAGMA defer_foreign_keys = ON;
CREATE TABLE _runs_0007 AS SELECT * FROM runs;
DROP TABLE runs;
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted', 'killed')),
    user TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    duration_s REAL,
    device TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '{}',
    environment TEXT NOT NULL DEFAULT '{}',
    env_hash TEXT,
    code_rev TEXT,
    code_dirty INTEGER,
    dataset_fingerprint TEXT,
    feature_views TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    pid INTEGER,
    pid_started REAL,
    host TEXT,
    heartbeat_at TEXT
);
INSERT INTO runs (id, experiment_id, name, status, user, started_at, ended_at, duration_s, device, params, tags,
    environment, env_hash, code_rev, code_dirty, dataset_fingerprint, feature_views, error)
SELECT id, experiment_id, name, status, user, started_at, ended_at, duration_s, device, params, tags,
    environment, env_hash, code_rev, code_dirty, dataset_fingerprint, feature_views, error FROM _runs_0007;
DROP TABLE _runs_0007;
CREATE INDEX runs_experiment ON runs(experiment_id, started_at);
CREATE INDEX runs_status ON runs(status)
"""

# Jobs gain the `predict` kind (batch scoring). SQLite cannot alter a CHECK, so the table is
# rebuilt with the same columns; nothing references jobs by foreign key.
# Rows pushed to a view (FeatureStore.push), durable until the next flush commits them as one offline batch.
FEATURE_PUSH = """
CREATE TABLE feature_push_rows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    view TEXT NOT NULL,
    version INTEGER NOT NULL,
    row TEXT NOT NULL,
    pushed_at TEXT NOT NULL,
    pushed_by TEXT NOT NULL
);
CREATE INDEX feature_push_rows_view ON feature_push_rows(view, version, id)
"""

JOBS_PREDICT = """
CREATE TABLE _jobs_0010 (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL CHECK (type IN ('train', 'materialize', 'monitor', 'retention', 'command', 'predict')),
    payload TEXT NOT NULL,
    project TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    gpus INTEGER NOT NULL DEFAULT 0,
    gpu_memory_mb INTEGER NOT NULL DEFAULT 0,
    cpus REAL NOT NULL DEFAULT 1,
    memory_mb INTEGER NOT NULL DEFAULT 0,
    timeout_s INTEGER NOT NULL DEFAULT 3600,
    cpu_fallback INTEGER NOT NULL DEFAULT 1,
    wait_gpu_s INTEGER NOT NULL DEFAULT 600,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    submitted_at REAL NOT NULL,
    submitted_by TEXT NOT NULL,
    started_at REAL,
    ended_at REAL,
    worker TEXT,
    lease_until REAL,
    pid INTEGER,
    devices TEXT,
    exit_code INTEGER,
    error TEXT,
    log_path TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
INSERT INTO _jobs_0010 SELECT id, type, payload, project, priority, gpus, gpu_memory_mb, cpus, memory_mb, timeout_s,
    cpu_fallback, wait_gpu_s, status, attempts, max_attempts, submitted_at, submitted_by, started_at, ended_at, worker,
    lease_until, pid, devices, exit_code, error, log_path, cancel_requested FROM jobs;
DROP TABLE jobs;
ALTER TABLE _jobs_0010 RENAME TO jobs;
CREATE INDEX jobs_status ON jobs(status, priority, submitted_at)
"""

# Monitoring: each model version's reference profile (an artifact), the checks run, the policies
# per deployment and every action a policy took, with the evidence that triggered it.
MONITORING = """
CREATE TABLE model_profiles (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    format TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    rows INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE monitor_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('drift', 'quality', 'ab')),
    checked_at TEXT NOT NULL,
    window TEXT NOT NULL,
    verdict TEXT NOT NULL,
    result TEXT NOT NULL,
    checked_by TEXT NOT NULL
);
CREATE INDEX monitor_checks_deployment ON monitor_checks(deployment, kind, id);
CREATE TABLE monitor_policies (
    deployment TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    source TEXT NOT NULL,
    next_run REAL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE monitor_actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL,
    action TEXT NOT NULL,
    at TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL,
    job_id INTEGER,
    model TEXT
);
CREATE INDEX monitor_actions_deployment ON monitor_actions(deployment, id)
"""

# One counter that every change to who may do what moves, in the same transaction (triggers, so no code
# path can forget it): a serving worker compares it instead of trusting a cache for seconds. Touching
# `last_used_at` is not such a change and leaves it alone.
AUTH = """
CREATE TABLE auth_state (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL);
INSERT INTO auth_state (id, revision) VALUES (1, 0);
CREATE TRIGGER auth_users_insert AFTER INSERT ON users BEGIN UPDATE auth_state SET revision = revision + 1; END;
CREATE TRIGGER auth_users_delete AFTER DELETE ON users BEGIN UPDATE auth_state SET revision = revision + 1; END;
CREATE TRIGGER auth_users_update AFTER UPDATE OF name, role, os_user, disabled_at ON users
    BEGIN UPDATE auth_state SET revision = revision + 1; END;
CREATE TRIGGER auth_tokens_insert AFTER INSERT ON tokens BEGIN UPDATE auth_state SET revision = revision + 1; END;
CREATE TRIGGER auth_tokens_delete AFTER DELETE ON tokens BEGIN UPDATE auth_state SET revision = revision + 1; END;
CREATE TRIGGER auth_tokens_update AFTER UPDATE OF id, user, role, secret_hash, expires_at, revoked_at ON tokens
    BEGIN UPDATE auth_state SET revision = revision + 1; END
"""
# A token's scopes: the deployments and feature views it is limited to (none: unrestricted). Rows are written
# with the token and never updated; any change moves the auth revision, so serving workers drop cached grants.
TOKEN_SCOPES = """
CREATE TABLE token_scopes (
    token_id TEXT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('deployment', 'view')),
    name TEXT NOT NULL,
    PRIMARY KEY (token_id, kind, name)
);
CREATE TRIGGER auth_scopes_insert AFTER INSERT ON token_scopes BEGIN UPDATE auth_state SET revision = revision + 1; END;
CREATE TRIGGER auth_scopes_delete AFTER DELETE ON token_scopes BEGIN UPDATE auth_state SET revision = revision + 1; END;
CREATE TRIGGER auth_scopes_update AFTER UPDATE ON token_scopes BEGIN UPDATE auth_state SET revision = revision + 1; END
"""

# Erasure (right to be forgotten): a rewritten feature batch replaces the batch it names (`replaces`) and is
# visible at the snapshots its original was (`visible_seq`); the original is marked `superseded_seq` and its
# file deleted, so no snapshot reads erased rows. Each erasure keeps its signed certificate, naming the
# subject only by an HMAC with the box key.
PRIVACY = """
ALTER TABLE feature_batches ADD COLUMN visible_seq INTEGER;
ALTER TABLE feature_batches ADD COLUMN replaces INTEGER;
ALTER TABLE feature_batches ADD COLUMN superseded_seq INTEGER;
CREATE TABLE feature_rewrites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    view TEXT NOT NULL,
    version INTEGER NOT NULL,
    commit_seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    batches_before INTEGER NOT NULL,
    batches_after INTEGER NOT NULL,
    rows_removed INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE erasures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    snapshot INTEGER NOT NULL,
    certificate TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
)
"""

# Retention: every purge (what store, which view version or deployment, the cutoff, rows and files removed),
# so training sets, lineage and the records of processing state what is gone; and the queue's schedules
# (`mlbox jobs submit retention --every 1d`), claimed by compare-and-set on next_run so one worker wins each slot.
RETENTION = """
CREATE TABLE purges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL CHECK (store IN ('features', 'predictions', 'labels')),
    target TEXT NOT NULL,
    retention TEXT NOT NULL,
    cutoff TEXT NOT NULL,
    rows INTEGER NOT NULL,
    files INTEGER NOT NULL,
    commit_seq INTEGER,
    purged_at TEXT NOT NULL,
    purged_by TEXT NOT NULL,
    job_id INTEGER
);
CREATE INDEX purges_target ON purges(store, target, id);
CREATE TABLE job_schedules (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    every_s INTEGER NOT NULL CHECK (every_s > 0),
    next_run REAL NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
)
"""

# Residency: the box's country (one row), the regions an admin declared for path prefixes and webhook hosts,
# and the transfer bases that allow a destination outside the residency (revoked, never deleted: the audit
# entries of past exports name them).
RESIDENCY = """
CREATE TABLE residency (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    country TEXT NOT NULL,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL
);
CREATE TABLE regions (
    kind TEXT NOT NULL CHECK (kind IN ('path', 'host')),
    destination TEXT NOT NULL,
    region TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (kind, destination)
);
CREATE TABLE transfer_bases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    region TEXT NOT NULL,
    basis TEXT NOT NULL,
    destination TEXT,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at TEXT,
    revoked_by TEXT
)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_core", _sql(CORE)),
    Migration("0002_features", _sql(FEATURES)),
    Migration("0003_tracking_registry", _sql(TRACKING)),
    Migration("0004_serving", _sql(SERVING)),
    Migration("0005_jobs", _sql(JOBS)),
    Migration("0007_run_process", _sql(RUN_PROCESS)),
    Migration("0008_feature_push", _sql(FEATURE_PUSH)),
    Migration("0010_jobs_predict", _sql(JOBS_PREDICT)),
    Migration("0011_monitoring", _sql(MONITORING)),
    Migration("0012_auth", _sql(AUTH)),
    Migration("0013_token_scopes", _sql(TOKEN_SCOPES)),
    Migration("0014_privacy", _sql(PRIVACY)),
    Migration("0015_retention", _sql(RETENTION)),
    Migration("0016_residency", _sql(RESIDENCY)),
)


def applied(db: Database) -> list[str]:
    if not db.scalar("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='_migrations'"):
        return []
    return [r["name"] for r in db.query("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(db: Database, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Bring `db` up to date; return the names applied now. Safe when several processes race."""
    known = {m.name for m in migrations}
    with db.atomic():
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = applied(db)
        unknown = [name for name in done if name not in known]
        if unknown:
            raise StoreError(
                f"{db.path} was written by a newer mlbox (unknown migration {unknown[0]!r})",
                hint="upgrade mlbox to open this box",
            )
        ran: list[str] = []
        for migration in migrations:
            if migration.name in done:
                continue
            with db.atomic():
                migration.apply(db)
                db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (migration.name, clock.iso()))
            ran.append(migration.name)
        return ran
