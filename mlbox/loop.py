"""The closed loop: a deployment's policy evaluated and its decisions carried out on deployments and jobs.

Monitoring (L3) decides from evidence and never touches deployments or the queue itself;
this module (L4) gathers the evidence, carries out each decision (retrain: a `train` job from
the deployed model's own spec on a fresh snapshot, deployed as a canary when its gate passes;
rollback and promote: the deployment's own transitions), records it in `monitor_actions` and the
audit chain with the evidence that triggered it, and raises the alerts. It also moves schedules
on (`mlbox worker` calls `schedule_due` every tick) and rebuilds the profile of a version
registered before profiles existed, from its pinned training snapshot.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox import clock
from mlbox.config import process_environ
from mlbox.errors import Conflict, NotFound, UsageError

if TYPE_CHECKING:
    from mlbox.box import Box
    from mlbox.monitor.decide import Decision
    from mlbox.monitor.policy import Policy

log = logging.getLogger("mlbox.monitor")


def load_policy(box: Box, deployment: str) -> Policy:
    from mlbox.monitor.policy import Policy

    stored = box.monitor.records.policy(deployment)
    if stored is None:
        raise NotFound(f"deployment {deployment!r} has no monitoring policy", hint="set one with `mlbox monitor apply FILE`")
    return Policy.from_dict(deployment, stored["policy"], stored["source"])


def set_policies(box: Box, policies: list[Policy], actor: str) -> None:
    """Store policies (one transaction, audited); each scheduled one is first due one schedule from now."""
    for policy in policies:
        box.deployments.get(policy.deployment)  # a policy names a deployment that exists
    with box.db.atomic():
        for policy in policies:
            next_run = None if policy.schedule_s is None else time.time() + policy.schedule_s
            box.monitor.records.set_policy(policy.deployment, policy.as_dict(), policy.source, actor, next_run)
            box.audit.record(actor, "monitor.policy", policy.deployment, {"policy": policy.public_dict(), "source": policy.source})


def remove_policy(box: Box, deployment: str, actor: str) -> None:
    with box.db.atomic():
        if not box.monitor.records.remove_policy(deployment):
            raise NotFound(f"deployment {deployment!r} has no monitoring policy")
        box.audit.record(actor, "monitor.policy_removed", deployment, {})


def retrain_active(box: Box, deployment: str) -> bool:
    """Whether a retrain job started by this deployment's policy is queued or running."""
    return any(
        j.type == "train" and (j.payload.get("retrain") or {}).get("deployment") == deployment
        for status in ("queued", "running")
        for j in box.jobs.list_jobs(status, limit=1000)
    )


def run_policy(box: Box, deployment: str, actor: str) -> dict[str, Any]:
    """One round of the loop for `deployment`: check, gather evidence, decide, act; what happened."""
    from mlbox.monitor.alerts import alert
    from mlbox.monitor.decide import DeploymentState, Evidence, PastAction, plan

    policy = load_policy(box, deployment)
    now = clock.now()
    window = policy.window
    check = box.monitor.check(deployment, window, thresholds=policy.thresholds(), actor=actor, now=now).as_dict()
    deployed = box.monitor.records.deployed(deployment)
    ab = box.monitor.ab(deployment, window, actor=actor, now=now) if deployed.canary else None
    evidence = Evidence(
        deployment=DeploymentState(primary=deployed.primary, canary=deployed.canary, canary_weight=deployed.canary_weight),
        check=check, serving=box.monitor.serving(deployment, window, now), serving_window=window.as_dict(now), ab=ab,
        retrain_active=retrain_active(box, deployment),
    )  # fmt: skip
    past = [PastAction(action=a["action"], at=clock.parse_iso(a["at"]), status=a["status"]) for a in box.monitor.records.actions(deployment, 200)]
    decided = plan(policy, evidence, past, now)
    if check["drifted"]:
        alert("drift", deployment, {"reason": _drift_summary(check), "window": check["window"]}, policy.alerts,
              environ=process_environ(), gate=_webhook_gate(box))  # fmt: skip
    taken = [carry_out(box, policy, d, actor) for d in decided.decisions]
    for hold in decided.held:
        log.info("monitor %s on %s held: %s", hold.action, deployment, hold.reason)
    return {
        "deployment": deployment, "drifted": check["drifted"], "actions": taken,
        "held": [{"action": h.action, "reason": h.reason} for h in decided.held],
    }  # fmt: skip


def carry_out(box: Box, policy: Policy, decision: Decision, actor: str) -> dict[str, Any]:
    """Do what `decision` says, record it with its evidence (monitor_actions and the audit chain), alert."""
    from mlbox.monitor.alerts import alert

    deployment = policy.deployment
    job_id: int | None = None
    model: str | None = None
    try:
        if decision.action == "retrain":
            assert policy.on_drift is not None
            job_id = submit_retrain(box, deployment, policy.on_drift.canary_weight, decision.reason, actor)
            status = "enqueued"
        elif decision.action == "rollback":
            model = box.deployments.get(deployment).canary_model
            box.deployments.rollback(deployment, actor)
            status = "done"
        else:
            model = box.deployments.get(deployment).canary_model
            box.deployments.promote(deployment, actor)
            status = "done"
        error = None
    except (UsageError, NotFound, Conflict) as exc:
        status, error = "failed", str(exc)
    evidence = {**decision.evidence, **({"error": error} if error else {})}
    with box.db.atomic():
        box.monitor.records.add_action(deployment, decision.action, status, decision.reason, evidence, job_id, model)
        box.audit.record(actor, f"monitor.{decision.action}", deployment,
                         {"status": status, "reason": decision.reason, "job": job_id, "model": model, "evidence": evidence})  # fmt: skip
    alert(decision.action, deployment, {"reason": decision.reason, "status": status, "job": job_id, "evidence": evidence},
          policy.alerts, environ=process_environ(), gate=_webhook_gate(box))  # fmt: skip
    return {"action": decision.action, "status": status, "reason": decision.reason, "job": job_id, "model": model, "error": error}


def submit_retrain(box: Box, deployment: str, canary_weight: float, reason: str, actor: str) -> int:
    """A `train` job from the primary's own training spec on a fresh snapshot, registered, then deployed as a canary."""
    primary = box.deployments.get(deployment).primary_model
    lineage = box.registry.get(primary).lineage
    spec = dict(lineage.get("spec") or {})
    if not spec:
        raise UsageError(f"{primary} has no training spec in its lineage, so it cannot be retrained automatically")
    spec["data"] = {k: v for k, v in dict(spec.get("data") or {}).items() if k != "snapshot"}  # a fresh snapshot
    payload = {
        "spec_inline": spec,
        "base_dir": str(lineage.get("spec_dir") or box.paths.home),
        "register": True,
        "retrain": {"deployment": deployment, "canary_weight": canary_weight, "from": primary, "reason": reason},
    }
    return box.jobs.submit("train", payload, actor).id


def deploy_retrained(box: Box, payload: dict[str, Any], version_ref: str, gate_passed: bool, job_id: int, actor: str) -> str:
    """After a policy's retrain job: deploy the new version as a canary when its gate passed; recorded either way."""
    retrain = payload["retrain"]
    deployment = retrain["deployment"]
    if gate_passed:
        box.deployments.canary(deployment, version_ref, float(retrain["canary_weight"]), actor)
        status, reason = "done", f"{version_ref} passed its gate: canary at {retrain['canary_weight']:g}%"
    else:
        status, reason = "failed", f"{version_ref} failed its gate, so it was not deployed"
    with box.db.atomic():
        box.monitor.records.add_action(deployment, "deploy_canary", status, reason, {"job": job_id, "from": retrain["from"]},
                                       job_id, version_ref)  # fmt: skip
        box.audit.record(actor, "monitor.deploy_canary", deployment, {"status": status, "model": version_ref, "job": job_id})
    return reason


def schedule_due(box: Box, now: float | None = None) -> list[int]:
    """Queue a `monitor` job for each deployment whose schedule is due, and each due queue schedule (one worker
    wins each); the job ids."""
    now = time.time() if now is None else now
    submitted = []
    for stored in box.monitor.records.policies():
        due, schedule = stored.get("next_run"), stored["policy"].get("schedule")
        if due is None or due > now or schedule is None:
            continue
        from mlbox.types import parse_duration

        if box.monitor.records.claim_due(stored["deployment"], due, now + parse_duration(schedule)):
            job = box.jobs.submit("monitor", {"deployment": stored["deployment"]}, stored["updated_by"])
            submitted.append(job.id)
    from mlbox.jobs.schedules import Schedules

    return submitted + Schedules(box.jobs).run_due(now)  # the queue's own schedules (`jobs submit retention --every`)


def _drift_summary(check: dict[str, Any]) -> str:
    parts = []
    for variant, v in check["variants"].items():
        drifted = [n for n, f in v["features"].items() if f.get("drifted")]
        if v.get("drifted"):
            parts.append(f"{variant} ({v['model']}): {len(drifted)} of {len(v['features'])} features drifted ({', '.join(drifted[:8])})")
    return "; ".join(parts) or "no variant drifted"


def rebuild_profile(box: Box, ref: str, actor: str) -> dict[str, Any]:
    """The reference profile of a version registered before profiles, from its pinned training snapshot; stored."""
    import numpy as np

    from mlbox.flavors.onnx import run, session
    from mlbox.flavors.profile import build_profile
    from mlbox.flavors.signature import Signature
    from mlbox.train import data as datamod
    from mlbox.train.spec import parse_spec

    version = box.registry.get(ref)
    lineage = version.lineage
    if not lineage.get("spec"):
        raise UsageError(f"{version.ref} has no training spec in its lineage, so its training data cannot be read again")
    raw = dict(lineage["spec"])
    if lineage.get("snapshot") is not None:
        raw["data"] = {**dict(raw.get("data") or {}), "snapshot": lineage["snapshot"]}  # the pinned snapshot
    spec = parse_spec(raw, f"{version.ref} lineage", Path(str(lineage.get("spec_dir") or box.paths.home)))
    data = datamod.load(spec, box.features if spec.data.labels else None, actor)
    if lineage.get("dataset_fingerprint") and data.fingerprint != lineage["dataset_fingerprint"]:
        raise Conflict(
            f"the training data of {version.ref} has changed since it was trained (fingerprint differs)",
            hint="its profile cannot be rebuilt faithfully; retrain and register a new version",
        )
    signature = Signature.from_dict(version.signature)
    X = signature.encode(data.frame)
    splits = datamod.split(data, spec.split, spec.seed)
    rows = np.arange(len(X)) if spec.split.method == "kfold" else splits[-1].train
    X = X[rows]
    sample = X[:: max(1, len(X) // 100_000)]
    onnx = box.registry.artifacts.read_verified(version.artifacts["model.onnx"]["sha256"], f"model {version.ref} file model.onnx")
    predictions = run(session(onnx, providers=["CPUExecutionProvider"]), sample)
    profile = build_profile(X, signature, task=version.task, predictions=np.asarray(predictions), importance=None)
    box.monitor.save_profile(version.ref, profile, actor)
    return {"model": version.ref, "rows": profile["rows"], "features": len(profile["features"]), "snapshot": lineage.get("snapshot")}


def _webhook_gate(box: Box) -> Any:
    """The residency check an alert's webhook passes before it is posted (security/residency.py)."""
    from mlbox.security.residency import Residency

    return Residency(box.db, box.audit).webhook_gate()
