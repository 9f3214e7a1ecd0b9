"""The management API: the console's reads and changes over HTTP, under `/v1/console/`, for `mlbox tui --url`.

Each route authenticates the token for its declared action (api/permissions.py), then runs one
`Console` method (mlbox/console/service.py) in a thread on a box opened for that request, as the
token's user: the console re-checks the role against the CLI's permission table for the command the
change stands for, so the TUI on the box, the TUI over HTTP and the CLI refuse the same things, and
a change's audit entry carries the operator's reason and `via: http`. A scoped token is refused
here (the console reads the whole box). Answers are the console's records as JSON; `RemoteClient`
(mlbox/tui/remote.py) turns them back into the same records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlbox.api.jsonrows import fits
from mlbox.console.records import PAGE, Pulse, Server, Verified
from mlbox.console.service import Console, TrafficCache
from mlbox.errors import NotFound, PermissionDenied, ValidationError

if TYPE_CHECKING:
    from mlbox.api.context import ServeContext
    from mlbox.api.predict import ContextRef
    from mlbox.types import Actor

PREFIX = "/v1/console"
MAX_LIMIT = 5000  # rows in one page
LOG_LIMIT = 1000  # prediction log records in one page (mlbox.monitor.logpage.MAX_LIMIT)
DEPLOY_CHANGES = ("weight", "canary", "rollback", "shadow")  # POST /v1/console/deployments/{name}/{change}
MODEL_CHANGES = ("promote", "archive")
JOB_CHANGES = ("cancel", "retry")
Handler = Callable[[Request], Awaitable[Response]]
Wrap = Callable[[Handler, str], Handler]
Json = Callable[[Any], Response]


def console_routes(ref: ContextRef, guarded: Wrap, json: Json, read_body: Callable[[Request], Awaitable[Any]]) -> list[Route]:
    """The routes, each passed through the app's one admission and failure path (`guarded`)."""
    traffic: TrafficCache = {}  # Pulse's traffic per deployment, kept until a bucket closes (one per worker)

    def who(request: Request, action: str) -> Actor:
        """The token's user, checked for the route's action before anything of the request is read."""
        grant = ref.get().grant(request.headers.getlist("authorization"), action)
        if grant.scopes is not None:
            raise PermissionDenied(
                f"{grant.actor.name}'s token is scoped; the management API reads the whole box",
                hint="use an unscoped token",
            )
        return grant.actor

    async def run(actor: Actor, work: Callable[[Console], Any]) -> Response:
        return json(await run_in_threadpool(_on_fresh_box, ref.get(), actor, work))

    async def call(request: Request, action: str, work: Callable[[Console], Any]) -> Response:
        return await run(who(request, action), work)

    def page(request: Request) -> int:
        return _int(request, "limit", PAGE, 1, MAX_LIMIT)

    def server(request: Request) -> Server:
        return Server("up", str(request.base_url).rstrip("/"), "answering this request")

    async def me(request: Request) -> Response:
        return await call(request, "read", lambda c: _plain(c.me()))

    async def pulse(request: Request) -> Response:
        up = server(request)
        return await call(request, "read", lambda c: c.pulse(up, traffic).as_json())

    async def deployments(request: Request) -> Response:
        return await call(request, "read", Console.deployments)

    async def deployment(request: Request) -> Response:
        name = request.path_params["name"]
        return await call(request, "read", lambda c: c.deployment_detail(name))

    async def predictions(request: Request) -> Response:
        name = request.path_params["name"]
        limit = _int(request, "limit", PAGE, 1, LOG_LIMIT)
        before, variant = request.query_params.get("before") or None, request.query_params.get("variant") or None
        errors = _flag(request, "errors")
        return await call(request, "read", lambda c: c.predictions(name, limit, before, variant, errors))

    async def jobs(request: Request) -> Response:
        limit = page(request)
        return await call(request, "read", lambda c: _plain(c.jobs(limit)))

    async def job_log(request: Request) -> Response:
        job = _job_id(request)
        offset = _int(request, "offset", -1, -1, 2**62)
        limit = _int(request, "limit", 65536, 1, 1 << 20)
        return await call(request, "read", lambda c: c.job_log(job, offset, limit))

    async def runs(request: Request) -> Response:
        limit = page(request)
        return await call(request, "read", lambda c: _plain(c.runs(limit)))

    async def run_(request: Request) -> Response:
        run_id = request.path_params["id"]
        return await call(request, "read", lambda c: c.run_detail(run_id))

    async def models(request: Request) -> Response:
        return await call(request, "read", Console.models)

    async def model(request: Request) -> Response:
        ref_ = request.path_params["ref"]
        return await call(request, "read", lambda c: c.model_detail(ref_))

    async def features(request: Request) -> Response:
        return await call(request, "read", Console.features)

    async def view(request: Request) -> Response:
        name = request.path_params["view"]
        return await call(request, "read", lambda c: c.view_detail(name))

    async def checks(request: Request) -> Response:
        limit = page(request)
        return await call(request, "read", lambda c: _plain(c.checks(limit)))

    async def check(request: Request) -> Response:
        check_id = _job_id(request)
        return await call(request, "read", lambda c: c.check_detail(check_id))

    async def audit(request: Request) -> Response:
        limit = page(request)
        return await call(request, "audit.read", lambda c: _plain(c.audit(limit)))

    async def verify(request: Request) -> Response:
        return await call(request, "audit.read", lambda c: _plain(c.verify_audit()))

    async def train_spec(request: Request) -> Response:
        return await call(request, "read", lambda c: {"spec": c.train_spec()})

    async def change_deployment(request: Request) -> Response:
        name, change = request.path_params["name"], _change(request, DEPLOY_CHANGES)
        actor = who(request, "deploy.manage")
        body = await read_body(request)
        if change == "weight":
            check_keys(body, {"weight", "reason"}, {"weight"})
            weight = _number(body, "weight", 0, 100)
            return await run(actor, lambda c: c.set_canary_weight(name, weight, _reason(body)))
        if change == "canary":
            check_keys(body, {"model", "weight", "reason"}, {"model", "weight"})
            canary, weight = body["model"], _number(body, "weight", 0, 100)
            if not isinstance(canary, str):
                raise ValidationError('"model" must be a model reference (NAME:VERSION)')
            return await run(actor, lambda c: c.set_canary(name, canary, weight, _reason(body)))
        if change == "shadow":
            check_keys(body, {"model", "reason"}, {"model"})
            model = body["model"]
            if model is not None and not isinstance(model, str):
                raise ValidationError('"model" must be a model reference (NAME:VERSION) or null to remove the shadow')
            return await run(actor, lambda c: c.set_shadow(name, model, _reason(body)))
        check_keys(body, {"reason"}, set())
        return await run(actor, lambda c: c.rollback(name, _reason(body)))

    async def check_deployment(request: Request) -> Response:
        name = request.path_params["name"]
        actor = who(request, "read")
        check_keys(await read_body(request), set(), set())
        return await run(actor, lambda c: c.drift_check(name))

    async def change_model(request: Request) -> Response:
        ref_, change = request.path_params["ref"], _change(request, MODEL_CHANGES)
        actor = who(request, "models.promote")
        body = await read_body(request)
        if change == "promote":
            check_keys(body, {"alias", "expect", "reason"}, {"alias"})
            alias, expect = body["alias"], body.get("expect")
            if not isinstance(alias, str):
                raise ValidationError('"alias" must be a string such as "production"')
            if expect is not None and not fits(expect, "int64"):  # 2.0 is an integer to JSON Schema, and to the document
                raise ValidationError('"expect" must be the version the alias holds now, or null when it holds none')
            expect = None if expect is None else int(expect)
            return await run(actor, lambda c: c.promote_model(ref_, alias, expect, _reason(body)))
        check_keys(body, {"reason"}, set())
        return await run(actor, lambda c: c.archive_model(ref_, _reason(body)))

    async def change_job(request: Request) -> Response:
        job, change = _job_id(request), _change(request, JOB_CHANGES)
        actor = who(request, "jobs.submit")
        body = await read_body(request)
        check_keys(body, {"reason"}, set())
        if change == "cancel":
            return await run(actor, lambda c: c.cancel_job(job, _reason(body)))
        return await run(actor, lambda c: c.retry_job(job, _reason(body)))

    async def submit_train(request: Request) -> Response:
        actor = who(request, "train.run")
        body = await read_body(request)
        check_keys(body, {"reason"}, set())
        # the box's own train.yaml only: a path from the request could name any file the server can read
        return await run(actor, lambda c: c.submit_train(c.train_spec(), _reason(body)))

    p = PREFIX
    get, post = ["GET"], ["POST"]
    return [
        Route(f"{p}/me", guarded(me, "console"), methods=get),
        Route(f"{p}/pulse", guarded(pulse, "console"), methods=get),
        Route(f"{p}/deployments", guarded(deployments, "console"), methods=get),
        Route(f"{p}/deployments/{{name}}", guarded(deployment, "console"), methods=get),
        Route(f"{p}/deployments/{{name}}/check", guarded(check_deployment, "console"), methods=post),
        Route(f"{p}/deployments/{{name}}/predictions", guarded(predictions, "console"), methods=get),
        Route(f"{p}/deployments/{{name}}/{{change}}", guarded(change_deployment, "console"), methods=post),
        Route(f"{p}/jobs", guarded(jobs, "console"), methods=get),
        Route(f"{p}/jobs/train", guarded(submit_train, "console"), methods=post),
        Route(f"{p}/jobs/train-spec", guarded(train_spec, "console"), methods=get),
        Route(f"{p}/jobs/{{id:int}}/log", guarded(job_log, "console"), methods=get),
        Route(f"{p}/jobs/{{id:int}}/{{change}}", guarded(change_job, "console"), methods=post),
        Route(f"{p}/runs", guarded(runs, "console"), methods=get),
        Route(f"{p}/runs/{{id}}", guarded(run_, "console"), methods=get),
        Route(f"{p}/models", guarded(models, "console"), methods=get),
        Route(f"{p}/models/{{ref}}", guarded(model, "console"), methods=get),
        Route(f"{p}/models/{{ref}}/{{change}}", guarded(change_model, "console"), methods=post),
        Route(f"{p}/features", guarded(features, "console"), methods=get),
        Route(f"{p}/features/{{view}}", guarded(view, "console"), methods=get),
        Route(f"{p}/checks", guarded(checks, "console"), methods=get),
        Route(f"{p}/checks/{{id:int}}", guarded(check, "console"), methods=get),
        Route(f"{p}/audit", guarded(audit, "console"), methods=get),
        Route(f"{p}/audit/verify", guarded(verify, "console"), methods=get),
    ]


def _on_fresh_box(ctx: ServeContext, actor: Any, work: Callable[[Console], Any]) -> Any:
    """`work` on a console over a box opened in this thread for this request only (SQLite connections are
    per thread; the worker's own box stays the event loop's)."""
    from mlbox.box import Box

    box = Box(ctx.settings, actor="mlbox-serve")
    try:
        return work(Console(box, actor, via="http"))
    finally:
        box.close()


def _plain(record: Any) -> Any:
    """A console record as JSON-able data."""
    import dataclasses

    if isinstance(record, Pulse):
        return record.as_json()
    if isinstance(record, Verified) or dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)  # type: ignore[arg-type]
    return record


def _job_id(request: Request) -> int:
    """An `{id:int}` of the path (a job's or a check's), within SQLite's integers."""
    job = int(request.path_params["id"])
    if not 1 <= job < 2**63:
        raise NotFound(f"no {request.url.path.split('/')[3].rstrip('s')} {job}")
    return job


def _change(request: Request, allowed: tuple[str, ...]) -> str:
    change = str(request.path_params["change"])
    if change not in allowed:
        raise NotFound(f"no route {request.url.path}", hint=f"changes are {', '.join(allowed)}")
    return change


def _int(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{key!r} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ValidationError(f"{key!r} must be between {low} and {high}, got {value}")
    return value


def _flag(request: Request, key: str) -> bool:
    raw = request.query_params.get(key)
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise ValidationError(f"{key!r} must be true or false, got {raw[:40]!r}")


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValidationError(f'"{key}" must be a number between {low:g} and {high:g}')
    return float(value)


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ValidationError('"reason" must be a string of at most 500 characters')
    return reason


def check_keys(body: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    """A JSON body's keys: none outside `allowed`, every one of `required` (422 naming the first wrong one)."""
    extra = sorted(set(body) - allowed)
    if extra:
        raise ValidationError(f"unknown key {extra[0]!r}", hint=f"allowed: {', '.join(sorted(allowed)) or 'none'}")
    missing = sorted(required - set(body))
    if missing:
        raise ValidationError(f"missing key {missing[0]!r}")
