"""`mlbox monitor`: drift checks, quality and A/B verdicts on labelled traffic, policies, actions, reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mlbox.cli._common import actor, console, done, emit_json, open_box, record, state, table

app = typer.Typer(help="Monitoring: drift, quality with delayed labels, A/B verdicts, policies that act, reports.",
                  no_args_is_help=True)  # fmt: skip
policy_app = typer.Typer(help="Monitoring policies per deployment (or `mlbox monitor apply FILE`).", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

Last = Annotated[str | None, typer.Option("--last", help="Window: the last duration, e.g. 24h, 7d (default 24h).")]
Since = Annotated[str | None, typer.Option("--since", help="Window start, ISO time (UTC unless it has an offset).")]
Until = Annotated[str | None, typer.Option("--until", help="Window end, ISO time.")]
LastRows = Annotated[int | None, typer.Option("--last-rows", min=1, help="Only the newest N rows of the window.")]
Name = Annotated[str, typer.Argument(help="Deployment name.")]
CHECK_COLUMNS = ["variant", "feature", "kind", "status", "psi", "ks_p", "chi2_p", "js", "wasserstein", "nulls", "range", "drifted"]


def _window(last: str | None, since: str | None, until: str | None, last_rows: int | None) -> Any:
    from mlbox.monitor.window import Window

    return Window.parse(last, since, until, last_rows)


def _check_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for variant, v in result["variants"].items():
        for section in ("features", "outputs"):
            for name, f in v[section].items():
                t = f.get("tests") or {}
                rows.append({
                    "variant": variant, "feature": name if section == "features" else f"→ {name}", "kind": f["kind"],
                    "status": f["status"], "psi": (t.get("psi") or {}).get("value"), "ks_p": (t.get("ks") or {}).get("p_value"),
                    "chi2_p": (t.get("chi2") or {}).get("p_value"), "js": (t.get("js") or {}).get("value"),
                    "wasserstein": (t.get("wasserstein") or {}).get("value"), "nulls": f.get("null_rate"),
                    "range": f.get("out_of_range_rate") if f["kind"] == "numeric" else f.get("unseen_rate"),
                    "drifted": "DRIFT" if f.get("drifted") else "",
                })  # fmt: skip
    return rows


def _summary(result: dict[str, Any]) -> str:
    parts = []
    for variant, v in result["variants"].items():
        drifted = [n for n, f in v["features"].items() if f.get("drifted")]
        verdict = "DRIFT" if v["drifted"] else "no drift"
        parts.append(f"{variant} {v['model']}: {verdict}, {len(drifted)}/{len(v['features'])} features drifted "
                     f"(weighted share {v['weighted_share']:.2f}) over {v['rows']:,} rows")  # fmt: skip
    return "; ".join(parts)


@app.command("check")
def check(name: Name, last: Last = None, since: Since = None, until: Until = None, last_rows: LastRows = None,
          no_record: Annotated[bool, typer.Option("--no-record", help="Do not keep the result in the history.")] = False,
          ) -> None:  # fmt: skip
    """Drift of every feature and output, per variant, against the deployed model's profile (exit 1 on drift)."""
    with open_box() as box:
        who = actor(box, "read")
        result = box.monitor.check(name, _window(last, since, until, last_rows), record=not no_record, actor=who.name).as_dict()
    if state.json:
        emit_json(result)
    else:
        table(_check_rows(result), CHECK_COLUMNS, title=f"drift of {name}, {result['window'].get('since') or '…'} to "
              f"{result['window'].get('until') or 'now'}", default=["variant", "feature", "status", "psi", "ks_p", "js", "drifted"])  # fmt: skip
        colour = "red" if result["drifted"] else "green"
        console.print(f"[{colour}]{_summary(result)}[/{colour}]")
    if result["drifted"]:
        raise typer.Exit(1)


@app.command("history")
def history(name: Name, limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N checks.")] = 20) -> None:
    """Earlier drift checks of a deployment, oldest first."""
    with open_box() as box:
        actor(box, "read")
        checks = box.monitor.history(name, "drift", limit)
    rows = [
        {"id": c["id"], "checked_at": c["checked_at"], "variant": variant, "model": v["model"], "rows": v["rows"],
         "drifted": "DRIFT" if v["drifted"] else "", "share": v["share"], "weighted_share": v["weighted_share"],
         "features": ", ".join(n for n, f in v["features"].items() if f.get("drifted"))}
        for c in checks for variant, v in c["variants"].items()
    ]  # fmt: skip
    table(rows, ["id", "checked_at", "variant", "model", "rows", "drifted", "share", "weighted_share", "features"],
          default=["id", "checked_at", "variant", "drifted", "share", "features"])  # fmt: skip


@app.command("quality")
def quality(name: Name, last: Last = None, since: Since = None, until: Until = None) -> None:
    """Quality per variant on labelled traffic (accuracy, F1, AUC, log loss, calibration; or RMSE, MAE, R²), with coverage."""
    with open_box() as box:
        who = actor(box, "read")
        result = box.monitor.quality(name, _window(last, since, until, None), actor=who.name)
    if state.json:
        emit_json(result)
        return
    rows = [{"variant": v, "model": q.get("model"), "rows": q.get("rows"), "labelled": q.get("labelled"),
             "coverage": q.get("coverage"), **(q.get("metrics") or {})} for v, q in result["variants"].items()]  # fmt: skip
    metrics = sorted({k for q in result["variants"].values() for k in (q.get("metrics") or {})})
    table(rows, ["variant", "model", "rows", "labelled", "coverage", *metrics], title=f"quality of {name}")


@app.command("ab")
def ab(name: Name, last: Last = None, since: Since = None, until: Until = None,
       metric: Annotated[str | None, typer.Option("--metric", help="accuracy, f1, roc_auc, log_loss (or rmse, mae, r2).")] = None,
       confidence: Annotated[float, typer.Option("--confidence", min=0.5, max=0.999, help="Interval confidence.")] = 0.95,
       ) -> None:  # fmt: skip
    """Primary against canary on labelled traffic: the difference, its interval and a plain verdict."""
    with open_box() as box:
        who = actor(box, "read")
        options: dict[str, Any] = {"confidence": confidence, **({"metric": metric} if metric else {})}
        result = box.monitor.ab(name, _window(last, since, until, None), actor=who.name, **options)
    if state.json:
        emit_json(result)
        return
    record({k: result.get(k) for k in ("metric", "direction", "primary", "canary", "difference", "ci_low", "ci_high",
                                        "p_value", "confidence", "method", "verdict")}, f"A/B of {name}")  # fmt: skip
    console.print(f"[bold]{result.get('verdict')}[/bold]")


@app.command("serving")
def serving(name: Name, last: Last = None, since: Since = None, until: Until = None) -> None:
    """Requests, errors, error rate and latency percentiles per variant, from the prediction log."""
    with open_box() as box:
        actor(box, "read")
        stats = box.monitor.serving(name, _window(last, since, until, None))
    table([{"variant": v, **s} for v, s in stats.items()],
          ["variant", "requests", "rows", "errors", "error_rate", "p50_ms", "p99_ms"], title=f"serving of {name}")  # fmt: skip


@app.command("profile")
def profile(model: Annotated[str, typer.Argument(help="NAME:VERSION registered before profiles existed.")]) -> None:
    """Build a version's reference profile from its pinned training snapshot (versions registered since have one)."""
    from mlbox.loop import rebuild_profile

    with open_box() as box:
        who = actor(box, "models.register")
        result = rebuild_profile(box, model, who.name)
    done(result, f"profile of {result['model']}: {result['rows']:,} rows, {result['features']} features")


@app.command("apply")
def apply(file: Annotated[Path, typer.Argument(help="Policy file (YAML).")] = Path("monitoring.yaml")) -> None:
    """Set the policies of every deployment a monitoring.yaml names."""
    from mlbox.errors import UsageError
    from mlbox.loop import set_policies
    from mlbox.monitor.policy import parse_policies

    with open_box() as box:
        who = actor(box, "deploy.manage")  # before reading the file: a refused user learns nothing of it
        from mlbox.types import printable, read_text_file

        try:
            text = read_text_file(file, "policy file")  # a regular, bounded UTF-8 file: never a device or a binary
        except UsageError as exc:
            raise UsageError(exc.message, hint="write monitoring.yaml (docs/monitoring-policies.md)") from None
        policies = parse_policies(text, printable(file))
        set_policies(box, policies, who.name)
    done({"applied": [p.deployment for p in policies]}, f"policies set for {', '.join(p.deployment for p in policies)}")


@policy_app.command("set")
def policy_set(
    name: Name,
    window: Annotated[str, typer.Option("--window", help="Window each check reads, e.g. 24h.")] = "24h",
    schedule: Annotated[str | None, typer.Option("--schedule", help="Run the policy in `mlbox worker` this often, e.g. 1h.")] = None,
    retrain: Annotated[bool, typer.Option("--retrain-on-drift", help="On drift, retrain and deploy the result as a canary.")] = False,
    canary_weight: Annotated[float, typer.Option("--canary-weight", help="Percent of traffic for a retrained canary.")] = 10.0,
    error_rate: Annotated[float | None, typer.Option("--rollback-error-rate", help="Roll back a canary above this error rate.")] = None,
    p99_ms: Annotated[float | None, typer.Option("--rollback-p99-ms", help="Roll back a canary above this p99 latency.")] = None,
    quality_delta: Annotated[float | None, typer.Option("--rollback-quality-delta", help="Roll back below this quality difference, e.g. -0.02.")] = None,
    promote_labels: Annotated[int | None, typer.Option("--promote-after-labels", help="Promote a canary that tests better on N labels.")] = None,
    webhook: Annotated[str | None, typer.Option("--webhook", help="POST alerts to this URL (public hosts only).")] = None,
) -> None:
    """Set one deployment's policy from options (the file form has every setting)."""
    from mlbox.loop import set_policies
    from mlbox.monitor.policy import parse_policy

    body: dict[str, Any] = {"window": window}
    if schedule:
        body["schedule"] = schedule
    if retrain:
        body["on_drift"] = {"action": "retrain", "canary_weight": canary_weight}
    breach = {k: v for k, v in {"error_rate": error_rate, "p99_ms": p99_ms, "quality_delta": quality_delta}.items() if v is not None}
    if breach:
        body["on_canary_breach"] = breach
    if promote_labels is not None:
        body["on_canary_better"] = {"labels": promote_labels, "action": "promote"}
    if webhook:
        body["alerts"] = {"webhook": webhook}
    policy = parse_policy(name, body, "cli")
    with open_box() as box:
        set_policies(box, [policy], actor(box, "deploy.manage").name)
    done(policy.public_dict(), f"policy of {name} set")


@policy_app.command("show")
def policy_show(name: Annotated[str | None, typer.Argument(help="Deployment (default: every policy).")] = None) -> None:
    """Policies as stored (webhook URLs cut to their host)."""
    from mlbox.monitor.policy import Policy

    with open_box() as box:
        actor(box, "read")
        stored = box.monitor.records.policies()
    rows = [{"deployment": s["deployment"], "source": s["source"], "updated_by": s["updated_by"], "updated_at": s["updated_at"],
             "policy": Policy.from_dict(s["deployment"], s["policy"], s["source"]).public_dict()}
            for s in stored if name is None or s["deployment"] == name]  # fmt: skip
    if state.json:
        emit_json(rows)
        return
    for row in rows:
        record(row["policy"], f"{row['deployment']} (from {row['source']}, by {row['updated_by']} at {row['updated_at']})")
    if not rows:
        console.print("[dim](no policies)[/dim]")


@policy_app.command("remove")
def policy_remove(name: Name) -> None:
    """Remove a deployment's policy (its history stays)."""
    from mlbox.loop import remove_policy

    with open_box() as box:
        remove_policy(box, name, actor(box, "deploy.manage").name)
    done({"deployment": name}, f"policy of {name} removed")


@app.command("run")
def run(name: Name) -> None:
    """Run a deployment's policy once now: check, decide, act (what `mlbox worker` does on its schedule)."""
    from mlbox.loop import run_policy

    with open_box() as box:
        outcome = run_policy(box, name, actor(box, "deploy.manage").name)
    if state.json:
        emit_json(outcome)
        return
    console.print(f"{name}: {'DRIFT' if outcome['drifted'] else 'no drift'}")
    for a in outcome["actions"]:
        console.print(f"  {a['action']} → {a['status']}: {a['reason']}" + (f" (job {a['job']})" if a.get("job") else ""))
    for h in outcome["held"]:
        console.print(f"  [dim]{h['action']} held: {h['reason']}[/dim]")


@app.command("actions")
def actions(name: Name, limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N actions.")] = 20) -> None:
    """What policies did on a deployment, with the evidence that triggered each action."""
    with open_box() as box:
        actor(box, "read")
        box.monitor.records.deployed(name)
        rows = box.monitor.records.actions(name, limit)
    table(rows, ["id", "at", "action", "status", "model", "job_id", "reason"], default=["id", "at", "action", "status", "reason"])


@app.command("report")
def report(name: Name, out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
           last: Last = None, since: Since = None, until: Until = None) -> None:  # fmt: skip
    """One self-contained offline HTML page: distributions, drift and quality over time, the A/B panel."""
    from mlbox import clock
    from mlbox.monitor.report import render_report, write_report

    window = _window(last, since, until, None)
    with open_box() as box:
        who = actor(box, "read")
        latest = box.monitor.check(name, window, actor=who.name).as_dict()
        past = box.monitor.history(name, "drift", 30)[:-1]
        qual = box.monitor.quality(name, window, actor=who.name)
        qual["history"] = box.monitor.history(name, "quality", 30)
        ab_result = box.monitor.ab(name, window, actor=who.name) if box.monitor.records.deployed(name).canary else None
        page = render_report(deployment=name, latest=latest, history=past, quality=qual, ab=ab_result, generated_at=clock.iso())
        write_report(box.audit, who.name, name, out, page)
    done({"report": str(out), "bytes": len(page)}, f"report of {name} written to {out} ({len(page) / 1e3:.0f} kB)")


def register(main: typer.Typer) -> None:
    main.add_typer(app, name="monitor")
