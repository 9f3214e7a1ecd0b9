"""Settings: the documented table, home resolution, and loading once from mlbox.toml + environment.

Settings are read once at the edge (`load_settings`) and passed down; nothing else in
mlbox reads the environment. Any value may be a reference instead of a literal:
`{"$env": "NAME"}` reads an environment variable, `{"$file": "path"}` a file's first line,
so secrets never sit inline in mlbox.toml.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlbox.errors import SettingsError

CONFIG_FILE = "mlbox.toml"
ENV_PREFIX = "MLBOX_"
# MLBOX_* variables that are not settings.
RESERVED_ENV = frozenset({"MLBOX_HOME", "MLBOX_TOKEN", "MLBOX_DEBUG"})


@dataclass(frozen=True)
class Setting:
    """One documented setting: dotted name, default, type, help text and allowed choices."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.replace(".", "_").upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("project.name", "", "Display name of the project; defaults to the box folder's name."),
    Setting("project.features", "features.yaml", "Feature definitions file, relative to the box."),
    Setting("project.train", "train.yaml", "Default training spec, relative to the box."),
    Setting("store.busy_timeout_ms", 30000, "How long a SQLite writer waits for another process's lock before failing."),
    Setting(
        "store.synchronous",
        "NORMAL",
        "SQLite synchronous mode for meta.db and online.db: NORMAL survives process crashes, FULL also power loss.",
        ("NORMAL", "FULL"),
    ),
    Setting("auth.token_ttl_days", 90, "Lifetime of a new API token when --expires is not given; 0 means no expiry."),
    Setting("doctor.min_free_disk_gb", 5.0, "`mlbox doctor` warns when the box's disk has less free space than this."),
    Setting(
        "doctor.artifact_grace_s",
        3600,
        "Seconds an artifact file no run or model version names is left alone before `mlbox doctor` reports it (a writer may be about to name it).",
    ),
    Setting(
        "features.duplicate_policy",
        "reject",
        "What ingest does with several rows for the same (entity, event timestamp): reject the batch or keep the last.",
        ("reject", "keep-last"),
    ),
    Setting(
        "features.naive_timestamps",
        "utc",
        "How ingest treats timestamps without a timezone: read them as UTC, or reject the batch.",
        ("utc", "reject"),
    ),
    Setting(
        "features.online_chunk_rows",
        50000,
        "Rows read from DuckDB and written to SQLite at a time when materializing (one transaction per view version).",
    ),
    Setting("features.push_flush_rows", 10000, "A push flushes a view's staged rows to an offline batch once this many are staged."),
    Setting(
        "features.push_flush_seconds",
        60.0,
        "A push flushes a view's staged rows to an offline batch once the oldest was staged this many seconds ago.",
    ),
    Setting(
        "tui.keymap",
        "",
        "Remapped `mlbox tui` keys: 'binding-id=key[,key]; …' (ids in docs/tui.md, e.g. mlbox.deploy.weights=w); a change may not sit on a ctrl key.",
    ),
    Setting("serve.host", "127.0.0.1", "Address `mlbox serve` listens on (loopback by default; put TLS in front for others)."),
    Setting("serve.port", 3000, "Port `mlbox serve` listens on."),
    Setting("serve.workers", 1, "Worker processes of `mlbox serve`."),
    Setting("serve.threads", 1, "onnxruntime intra-op threads per worker (set explicitly: the default oversubscribes small machines)."),
    Setting(
        "serve.auth",
        True,
        "Require an API token (Authorization: Bearer mlbx_...) on every /v1 route; false makes every caller an admin.",
    ),
    Setting("serve.max_rows", 1000, "Most rows (or entities) in one predict request; more gets 413."),
    Setting("serve.max_body_bytes", 1048576, "Largest request body in bytes; larger gets 413 before it is read."),
    Setting("serve.max_concurrency", 64, "Requests admitted per worker (queued for their turn or running; uploads are not counted) before new ones get 429 with Retry-After."),
    Setting("serve.reload_seconds", 0.5, "How often a server checks meta.db for deployment changes."),
    Setting("serve.log_flush_seconds", 1.0, "How often the prediction log is written to Parquet (at most this much is lost on kill -9)."),
    Setting("serve.log_max_rows", 200000, "Prediction log records buffered in memory at most; beyond it new ones are dropped and counted."),
    Setting("serve.ssl_certfile", "", "PEM certificate (chain) `mlbox serve` speaks HTTPS with; relative to the box folder; empty: plain HTTP."),
    Setting("serve.ssl_keyfile", "", "PEM private key of serve.ssl_certfile (unencrypted, mode 0600); relative to the box folder."),
    Setting(
        "serve.allowed_hosts",
        "",
        "Comma-separated extra Host names a POST may carry (loopback names and the address it arrived at always may; * any): a DNS-rebinding guard, auth on or off.",
    ),
    Setting(
        "serve.allowed_origins",
        "",
        "Comma-separated Origins (e.g. https://app.example) allowed to POST besides the server's own; a browser request from any other gets 403.",
    ),
    Setting("serve.max_header_bytes", 65536, "Largest request line plus headers in bytes; a larger head gets 431 and the connection is closed."),
    Setting("serve.header_timeout_s", 10.0, "Seconds a connection may take to send a complete request head; then 408 and close."),
    Setting("serve.keepalive_timeout_s", 5, "Seconds an idle keep-alive connection is held open between requests."),
    Setting("serve.max_queue_ms", 50.0, "A request whose expected wait for its turn (queue ahead x mean service time) is over this many ms gets 429 with Retry-After at once."),
    Setting("serve.max_concurrency_per_token", 32, "Requests one API token may have outstanding per worker (uploading, queued or running); more get 429 naming this limit."),
    Setting("serve.body_timeout_s", 30.0, "Seconds a request may take to send its body once its head is complete; then 408 and the connection is closed."),
    Setting("serve.max_pipelined", 16, "Requests one connection may have waiting behind the one being served (HTTP/1.1 pipelining); more and it is closed."),
    Setting(
        "privacy.protected_reads",
        "mask",
        "What a role without features.read_pii gets when it reads a pii or restricted field: mask (strings '***', other values null) or refuse (403).",
        ("mask", "refuse"),
    ),
    Setting("features.max_ingest_rows", 100_000_000, "Most rows one ingested file, frame or transformation output may hold; more is refused before anything is written."),
    Setting(
        "features.max_ingest_bytes",
        17_179_869_184,
        "Most bytes one ingested file may hold once decompressed and in memory (a Parquet file's estimate from its footer, a .csv.gz counted while inflating); more is refused before it is read.",
    ),
    Setting("features.max_row_groups", 10_000, "Most row groups in one ingested Parquet file (read from its footer before any data)."),
    Setting("encryption.master_key", "", "Master key of an encrypted box (base64 of 32 bytes), best given by reference ({\"$env\": ...} or {\"$file\": ...}); empty: keys/master.key. It unwraps the data keys in keys/keyring.json."),
    Setting("auth.oidc_file", "oidc.yaml", "YAML file, relative to the box, listing the OIDC issuers whose JWT access tokens `mlbox serve` accepts; absent: none."),
    Setting("auth.oidc_leeway_s", 30, "Seconds of clock skew allowed when checking a JWT's exp, nbf and iat."),
    Setting("auth.oidc_jwks_max_age_s", 3600.0, "Seconds an issuer's JWKS fetched from its URL is used before it is fetched again."),
    Setting("auth.oidc_jwks_refresh_s", 30.0, "Least seconds between JWKS fetches caused by a JWT whose kid is unknown (a key rotation)."),
    Setting("auth.oidc_jwks_timeout_s", 3.0, "Seconds a JWKS fetch may take before the keys held are kept."),
    Setting("privacy.prediction_log_retention", "", "How long logged predictions are kept, by their time (e.g. 400d); older ones are removed by `mlbox privacy purge` and the retention job. Empty: kept."),
    Setting("privacy.labels_retention", "", "How long label batches' rows are kept, by the time of the prediction they label (e.g. 400d); older ones are purged like the log. Empty: kept."),
    Setting("privacy.deployment_retention", "", "Per-deployment retention of its prediction log and labels, overriding the two settings above: DEPLOYMENT=DURATION, comma-separated (e.g. fraud_api=30d, churn_api=2w)."),
)
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one box. `settings["store.busy_timeout_ms"]`."""

    home: Path
    values: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None
    home_reason: str = ""

    def __getitem__(self, name: str) -> Any:
        if name not in SETTINGS_BY_NAME:
            raise KeyError(name)
        return self.values.get(name, SETTINGS_BY_NAME[name].default)

    def project_name(self) -> str:
        return str(self["project.name"] or self.home.name)


def find_project(start: Path) -> Path | None:
    """Nearest directory at or above `start` holding an mlbox.toml."""
    for d in (start, *start.parents):
        if (d / CONFIG_FILE).is_file():
            return d
    return None


def resolve_home(cli_home: str | os.PathLike[str] | None, environ: Mapping[str, str], cwd: Path) -> tuple[Path, str]:
    """The box directory and why it was chosen: --home, MLBOX_HOME, nearest mlbox.toml, ~/.mlbox."""
    if cli_home:
        return (cwd / Path(cli_home).expanduser()).resolve(), "--home"
    if environ.get("MLBOX_HOME"):
        return (cwd / Path(environ["MLBOX_HOME"]).expanduser()).resolve(), "MLBOX_HOME"
    project = find_project(cwd)
    if project is not None:
        return project.resolve(), f"nearest {CONFIG_FILE}"
    home = Path(environ.get("HOME") or Path.home())
    return (home / ".mlbox").resolve(), "default ~/.mlbox"


def serve_home(bundled: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The box a serving process opens: the one bundled at `bundled` (inside a Bento), else MLBOX_HOME, else
    None (resolve as usual). A Bento is self-contained, so its own box wins over any MLBOX_HOME around it."""
    if (bundled / "meta.db").is_file():
        return bundled
    home = home_from_env(environ)
    return Path(home) if home else None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_reference(value):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_reference(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("$env", "$file")


def _deref(name: str, value: Any, where: str, environ: Mapping[str, str], base: Path) -> Any:
    if not _is_reference(value):
        return value
    kind, target = next(iter(value.items()))
    if kind == "$env":
        if str(target) not in environ:
            raise SettingsError(f"{where}: setting '{name}' refers to environment variable {target}, which is not set")
        return environ[str(target)]
    path = base / str(target)
    try:
        return path.read_text().splitlines()[0].strip() if path.stat().st_size else ""
    except OSError as exc:
        raise SettingsError(f"{where}: setting '{name}' refers to file {path}: {exc.strerror}") from None


def coerce(setting: Setting, raw: Any, where: str) -> Any:
    """Check and convert one raw value (TOML value or environment string) to the setting's type."""
    want = setting.type
    value: Any = raw
    if isinstance(raw, str) and want is not str:
        text = raw.strip()
        try:
            if want is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(text)
                value = text.lower() in ("1", "true", "yes", "on")
            else:
                value = want(text)
        except ValueError:
            raise SettingsError(f"{where}: setting '{setting.name}' must be {want.__name__}, got {raw!r}") from None
    elif want is float and isinstance(raw, int) and not isinstance(raw, bool):
        value = float(raw)
    if type(value) is not want:
        raise SettingsError(f"{where}: setting '{setting.name}' must be {want.__name__}, got {raw!r}")
    if setting.choices and value not in setting.choices:
        raise SettingsError(f"{where}: setting '{setting.name}' must be one of {', '.join(setting.choices)}, got {raw!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise SettingsError(f"{where}: setting '{setting.name}' must not be negative, got {raw!r}")
    return value


def read_config_file(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse mlbox.toml into checked {dotted name: value}; one clear error naming key and file."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not UTF-8 text") from None
    values: dict[str, Any] = {}
    for name, raw in _flatten(table).items():
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:
            raise SettingsError(f"{path}: unknown setting '{name}'", hint="`mlbox settings` lists them")
        values[name] = coerce(setting, _deref(name, raw, str(path), environ, path.parent), str(path))
    return values


def load_settings(
    home: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve the box and load its settings: defaults < mlbox.toml < MLBOX_* environment."""
    env = dict(os.environ if environ is None else environ)
    box, reason = resolve_home(home, env, cwd or Path.cwd())
    config = box / CONFIG_FILE
    values: dict[str, Any] = {}
    source = None
    if config.is_file():
        values.update(read_config_file(config, env))
        source = config
    by_env = {s.env_var: s for s in SETTINGS}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in RESERVED_ENV:
            continue
        setting = by_env.get(var)
        if setting is None:
            raise SettingsError(f"environment: unknown setting variable {var}", hint="`mlbox settings` lists them")
        values[setting.name] = coerce(setting, raw, f"environment variable {var}")
    return Settings(home=box, values=values, source=source, home_reason=reason)


# The process environment ---------------------------------------------------------
# Every read of os.environ in mlbox goes through these helpers (tests/test_environ.py
# checks it), so what a process takes from its environment is listed in one place.


def process_environ() -> Mapping[str, str]:
    """The live process environment, read-only by contract: pass it down, never write it."""
    return os.environ


def token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """MLBOX_TOKEN, the API token the CLI acts with (None when unset or empty)."""
    return (process_environ() if environ is None else environ).get("MLBOX_TOKEN") or None


def home_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """MLBOX_HOME, the box a server process or child job was started for (None when unset)."""
    return (process_environ() if environ is None else environ).get("MLBOX_HOME") or None


def env_value(name: str, default: str = "", environ: Mapping[str, str] | None = None) -> str:
    """One non-mlbox variable (e.g. a benchmark's BENCH_ONNX_MODEL, PYTHONPATH), `default` when unset."""
    return (process_environ() if environ is None else environ).get(name, default)


def child_env(
    environ: Mapping[str, str] | None = None, *, drop: tuple[str, ...] = (), **extra: str
) -> dict[str, str]:
    """The environment of a child process: this one's (or `environ`) minus `drop`, plus `extra`.

    A copy: children get their settings without this process ever writing os.environ.
    """
    env = {k: v for k, v in (process_environ() if environ is None else environ).items() if k not in drop}
    env.update(extra)
    return env
