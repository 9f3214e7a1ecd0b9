"""Models loaded for serving, and deployments with their split, kept fresh from meta.db.

A `LoadedModel` is a verified ONNX file in an onnxruntime session plus its signature. The
`Runtime` holds one immutable `LiveDeployment` per deployment; a poller compares revisions
in meta.db every `serve.reload_seconds` and swaps in rebuilt ones, so a request in flight
keeps the deployment it started with and never fails because of a change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from mlbox.errors import NotFound
from mlbox.flavors import onnx as onnx_files
from mlbox.hardware import onnx_providers
from mlbox.flavors.signature import Signature
from mlbox.registry.store import Registry
from mlbox.serve.deployments import Deployment, Deployments
from mlbox.serve.router import TrafficSplit


@dataclass(frozen=True)
class LoadedModel:
    """One model version ready to answer: its verified ONNX session, signature, feature references and provider."""
    ref: str
    task: str
    signature: Signature
    session: Any
    feature_refs: Mapping[str, str]  # input column -> "view@version:field" (entity lookups)
    provider: str = "CPUExecutionProvider"  # the execution provider the session actually runs on

    def predict(self, X: np.ndarray) -> np.ndarray:
        return onnx_files.run(self.session, X)

    def outputs(self, pred: np.ndarray) -> list[Any]:
        """JSON-ready predictions: {class: probability (6 decimals)} per row for classifiers, numbers for regressors."""
        if self.task == "classification":
            classes = self.class_names
            return [dict(zip(classes, [round(p, 6) for p in row], strict=True)) for row in pred.tolist()]
        values: list[Any] = pred.reshape(-1).astype(np.float64).tolist()
        return values

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.signature.classes)


class ModelCache:
    """Loads each model version once per process; versions are immutable, so entries never go stale.

    Sessions run on the first available provider of `providers` (default: CUDA when this
    onnxruntime build and machine have it, else CPU); each model records the one it got.
    """

    def __init__(self, registry: Registry, threads: int, providers: list[str] | None = None) -> None:
        self.registry = registry
        self.threads = threads
        self.providers = providers
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, ref: str) -> LoadedModel:
        model = self._models.get(ref)
        if model is not None:
            return model
        with self._lock:
            if ref not in self._models:
                version = self.registry.get(ref)
                meta = version.artifacts.get("model.onnx")
                if meta is None:
                    raise NotFound(f"{version.ref} has no ONNX export")
                # verified (HMAC, sha256) and, in an encrypted box, decrypted in memory: no plaintext file is written
                data = self.registry.artifacts.read_verified(meta["sha256"], f"model {version.ref} file model.onnx")
                if self.providers is None:
                    self.providers = onnx_providers()["chosen"]
                session = onnx_files.session(data, self.threads, self.providers, name="model.onnx")
                self._models[ref] = LoadedModel(
                    ref=version.ref,
                    task=version.task,
                    signature=Signature.from_dict(version.signature),
                    session=session,
                    feature_refs=dict(version.lineage.get("feature_refs") or {}),
                    # what onnxruntime actually gave: a CUDA provider that fails to start falls back to CPU
                    provider=session_provider(session),
                )
            return self._models[ref]


@dataclass(frozen=True)
class LiveDeployment:
    """What one worker serves for a deployment right now: its split and loaded primary, canary and shadow."""
    deployment: Deployment
    split: TrafficSplit
    primary: LoadedModel
    canary: LoadedModel | None
    shadow: LoadedModel | None


@dataclass
class Runtime:
    """A worker's live deployments: loads them, follows meta.db's revisions every `reload_seconds`, swaps splits in."""
    deployments: Deployments
    models: ModelCache
    reload_seconds: float = 0.5
    live: dict[str, LiveDeployment] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # deployment -> why it could not load
    on_reload: Callable[[str], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _build(self, d: Deployment) -> LiveDeployment:
        return LiveDeployment(
            d,
            d.split(),
            self.models.get(d.primary_model),
            self.models.get(d.canary_model) if d.canary_model else None,
            self.models.get(d.shadow_model) if d.shadow_model else None,
        )

    def refresh(self) -> bool:
        """Reload deployments whose revision changed; True when anything changed."""
        revisions = self.deployments.revisions()
        changed = False
        fresh = dict(self.live)
        for name in list(fresh):
            if name not in revisions:
                del fresh[name]
                changed = True
        for name, revision in revisions.items():
            current = fresh.get(name)
            if current is not None and current.deployment.revision == revision:
                continue
            try:
                fresh[name] = self._build(self.deployments.get(name))
                self.errors.pop(name, None)
                changed = True
            except Exception as exc:  # keep serving the old split; report it on /readyz
                self.errors[name] = f"{type(exc).__name__}: {exc}"
        if changed:
            self.live = fresh  # one reference swap: readers see the old dict or the new one
            if self.on_reload:
                self.on_reload(",".join(sorted(fresh)))
        return changed

    def serving(self) -> dict[str, dict[str, dict[str, str]]]:
        """deployment -> variant (primary, canary, shadow) -> {"model", "provider"}, as loaded now."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        for name, d in sorted(self.live.items()):
            variants = (("primary", d.primary), ("canary", d.canary), ("shadow", d.shadow))
            out[name] = {v: {"model": m.ref, "provider": m.provider} for v, m in variants if m is not None}
        return out

    def get(self, name: str) -> LiveDeployment:
        live = self.live.get(name)
        if live is None:
            raise NotFound(f"no deployment {name!r}", hint="`mlbox deploy create` makes one")
        return live

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="mlbox-deploy-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.reload_seconds):
            try:
                self.refresh()
            except Exception as exc:  # a locked or briefly unavailable meta.db: try again next tick
                self.errors["__poll__"] = str(exc)
            else:
                self.errors.pop("__poll__", None)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def session_provider(session: Any) -> str:
    """The execution provider an onnxruntime session runs on (the first it reports)."""
    providers = session.get_providers()
    return str(providers[0]) if providers else "CPUExecutionProvider"


def monotonic_ms() -> float:
    return time.perf_counter() * 1000
