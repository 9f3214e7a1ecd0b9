"""The management API's part of /openapi.json: every `/v1/console/...` operation (api/manage.py), with its
parameters' patterns and bounds, its body and the shape of its answer."""

from __future__ import annotations

from typing import Any

from mlbox.api.openapi import MODEL_REF, NAME, _body, _errors, _ok
from mlbox.registry.store import ALIASES

ROW = {"type": "object"}
PAGE = {"type": "object", "required": ["rows", "more"], "additionalProperties": False,
        "properties": {"rows": {"type": "array", "items": ROW}, "more": {"type": "boolean"}}}  # fmt: skip
RECORD = {"type": "object", "required": ["ts", "request_id", "model", "variant", "latency_ms", "entity", "inputs", "outputs", "error"],
          "properties": {"ts": {"type": "string"}, "request_id": {"type": "string"}, "model": {"type": "string"},
                         "variant": {"type": "string"}, "latency_ms": {"type": ["number", "null"]},
                         "error": {"type": ["string", "null"]}}}  # fmt: skip
LOG_PAGE = {"type": "object", "required": ["deployment", "records", "next", "total", "files", "disclosure", "masked", "refused"],
            "properties": {"deployment": {"type": "string"}, "files": {"type": "integer", "minimum": 0},
                           "records": {"type": "array", "items": RECORD}, "next": {"type": ["string", "null"],
                           "description": "the `before` of the next (older) page; null on the last"},
                           "total": {"type": "integer"}, "disclosure": {"enum": ["raw", "mask", "refuse"]},
                           "masked": {"type": "array", "items": {"type": "string"}},
                           "refused": {"type": "array", "items": {"type": "string"}}}}  # fmt: skip
REASON = {"type": "string", "maxLength": 500, "description": "why: kept in the change's audit entry"}
JOB_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
RUN_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}


def _param(name: str, schema: dict[str, Any], where: str = "path") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema}


def _get(op: str, summary: str, answer: dict[str, Any], params: list[dict[str, Any]] | None = None,
         errors: tuple[int, ...] = ()) -> dict[str, Any]:  # fmt: skip
    operation: dict[str, Any] = {"operationId": op, "summary": summary, "tags": ["console"],
                 "responses": {**_ok(answer), **_errors(400, 401, 403, 405, 422, 429, 500, *errors)}}  # fmt: skip
    if params:
        operation["parameters"] = params
    return {"get": operation}


def _post(op: str, summary: str, params: list[dict[str, Any]], props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    body = {"type": "object", "additionalProperties": False, "required": required, "properties": props}
    return {"post": {
        "operationId": op, "summary": summary, "tags": ["console"], "parameters": params,
        "requestBody": {**_body(body), "required": bool(required)},  # no body is the empty object
        "responses": {**_ok(ROW), **_errors(400, 401, 403, 404, 405, 409, 413, 422, 429, 500)},
    }}  # fmt: skip


def console_paths() -> dict[str, Any]:
    """The operations `mlbox tui --url` calls; answers are the console's records (mlbox/console/records.py)."""
    limit = [_param("limit", {"type": "integer", "minimum": 1, "maximum": 5000}, "query")]
    name, job, ref = [_param("name", NAME)], [_param("id", JOB_ID)], [_param("ref", MODEL_REF)]
    reason = {"reason": REASON}
    p = "/v1/console"
    return {
        f"{p}/me": _get("console_me", "Who the token acts as", {
            "type": "object", "required": ["name", "role"], "properties": {"name": {"type": "string"}, "role": {"type": "string"}}}),
        f"{p}/pulse": _get("console_pulse", "The home screen: server, deployments with traffic, jobs, GPUs, alerts, disk", {
            "type": "object", "required": ["box", "server", "deployments", "jobs", "gpus", "audit", "verdicts", "disk", "traffic"]}),
        f"{p}/deployments": _get("console_deployments", "Deployments with their split", {"type": "array", "items": ROW}),
        f"{p}/deployments/{{name}}": _get("console_deployment", "A deployment's shadow-vs-primary and A/B", ROW, name, (404,)),
        f"{p}/deployments/{{name}}/predictions": _get("console_predictions", "A page of the prediction log, newest first", LOG_PAGE, [
            *name, _param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "query"),
            _param("before", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,4000}$"}, "query"),
            _param("variant", {"enum": ["primary", "canary", "shadow"]}, "query"),
            _param("errors", {"type": "boolean"}, "query")], (404,)),
        f"{p}/deployments/{{name}}/check": _post("console_check", "Check drift now (the last 24 hours)", name, {}, []),
        f"{p}/deployments/{{name}}/weight": _post("console_weight", "Set the canary's weight", name, {
            "weight": {"type": "number", "minimum": 0, "maximum": 100}, **reason}, ["weight"]),
        f"{p}/deployments/{{name}}/canary": _post("console_canary", "Send a share of traffic to a canary model", name, {
            "model": MODEL_REF, "weight": {"type": "number", "minimum": 0, "maximum": 100}, **reason}, ["model", "weight"]),
        f"{p}/deployments/{{name}}/rollback": _post("console_rollback", "Roll back", name, reason, []),
        f"{p}/deployments/{{name}}/shadow": _post("console_shadow", "Set (or clear with null) the shadow", name, {
            "model": {"anyOf": [MODEL_REF, {"type": "null"}]}, **reason}, ["model"]),
        f"{p}/jobs": _get("console_jobs", "The job queue, newest first", PAGE, limit),
        f"{p}/jobs/train": _post("console_train", "Queue a training job from the box's train.yaml", [], reason, []),
        f"{p}/jobs/train-spec": _get("console_train_spec", "The spec a training job would run", {
            "type": "object", "required": ["spec"], "properties": {"spec": {"type": "string"}}}),
        f"{p}/jobs/{{id}}/log": _get("console_job_log", "A byte range of a job's log (offset -1: its tail)", ROW, [
            *job, _param("offset", {"type": "integer", "minimum": -1, "maximum": 2**62}, "query"),
            _param("limit", {"type": "integer", "minimum": 1, "maximum": 1 << 20}, "query")], (404,)),
        f"{p}/jobs/{{id}}/cancel": _post("console_cancel", "Cancel a job (your own; an admin, any)", job, reason, []),
        f"{p}/jobs/{{id}}/retry": _post("console_retry", "Queue an ended job again (your own; an admin, any)", job, reason, []),
        f"{p}/runs": _get("console_runs", "Tracked runs, newest first", PAGE, limit),
        f"{p}/runs/{{id}}": _get("console_run", "One run's params, metrics and metric histories", ROW,
                                 [_param("id", RUN_ID)], (404,)),
        f"{p}/models": _get("console_models", "Model versions", {"type": "array", "items": ROW}),
        f"{p}/models/{{ref}}": _get("console_model", "A model version: lineage, gate, ONNX parity, signature", ROW, ref, (404,)),
        f"{p}/models/{{ref}}/promote": _post("console_promote", "Point an alias at a version (compare-and-set)", ref, {
            "alias": {"enum": list(ALIASES)}, "expect": {"type": ["integer", "null"], "minimum": 1}, **reason}, ["alias"]),
        f"{p}/models/{{ref}}/archive": _post("console_archive", "Archive a version", ref, reason, []),
        f"{p}/features": _get("console_features", "Feature views, latest versions", {"type": "array", "items": ROW}),
        f"{p}/features/{{view}}": _get("console_view", "A view's fields, batches, stats, lineage, masked samples", ROW,
                                       [_param("view", NAME)], (404,)),
        f"{p}/checks": _get("console_checks", "Monitoring checks, newest first", PAGE, limit),
        f"{p}/checks/{{id}}": _get("console_check", "One check: each feature's severity and histograms, history", ROW,
                                   [_param("id", JOB_ID)], (404,)),
        f"{p}/audit": _get("console_audit", "The audit log, newest first", PAGE, limit),
        f"{p}/audit/verify": _get("console_audit_verify", "Verify the audit chain", {
            "type": "object", "required": ["ok", "checked", "bad_seq", "problem"]}),
    }  # fmt: skip
