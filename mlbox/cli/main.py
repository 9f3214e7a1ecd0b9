"""The `mlbox` command: global options, one sub-app per noun, and the one error wrapper."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from rich.markup import escape

from mlbox.cli import _common
from mlbox.cli._common import err_console, state
from mlbox.cli._tables import WIDE_HELP, add_wide_options
from mlbox.errors import MlboxError
from mlbox.store.sqlite import operational_errors

class MlboxGroup(TyperGroup):
    """The root command group: gives every table command its --wide flag once the tree is built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_wide_options(self, next(p for p in self.params if p.name == "wide"), _common.set_wide)


app = typer.Typer(
    name="mlbox",
    cls=MlboxGroup,
    help="A single-node MLOps appliance: feature store, tracking, registry, training, serving, monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: typer's rich help imports markdown-it (+150 ms on every --help)
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(
    home: Annotated[
        str | None,
        typer.Option("--home", help="Box folder (default: $MLBOX_HOME, the nearest mlbox.toml, then ~/.mlbox)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
    token_file: Annotated[
        str | None,
        typer.Option("--token-file", help="Act with the API token in this file (mode 0600) instead of as the OS user."),
    ] = None,
) -> None:
    state.home, state.json, state.debug, state.wide = home, json_output, debug, wide
    state.token_file = token_file


def _register() -> None:
    from mlbox.cli import audit, auth, bench, box, deploy, features, jobs, labels, models, monitor, package, predict, quickstart, serve, train

    box.register(app)
    quickstart.register(app)
    train.register(app)
    app.add_typer(models.app, name="models")
    app.add_typer(deploy.app, name="deploy")
    serve.register(app)
    predict.register(app)
    package.register(app)
    jobs.register(app)
    app.add_typer(labels.app, name="labels")
    monitor.register(app)
    app.add_typer(auth.app, name="auth")
    app.add_typer(audit.app, name="audit")
    app.add_typer(features.app, name="features")
    app.add_typer(bench.app, name="bench")
    from mlbox.cli import keys, privacy, tui

    app.add_typer(privacy.app, name="privacy")
    app.add_typer(keys.app, name="keys")
    tui.register(app)


_register()


def _fail(message: str, code: int) -> None:
    from mlbox.types import printable

    # whatever a message quotes (a name, a path, a file's text) reaches the terminal as text, never as escapes
    err_console.print(f"[bold red]error:[/bold red] [red]{escape(printable(message))}[/red]", soft_wrap=True)
    sys.exit(code)


def run() -> None:
    """Console-script entry point: MlboxError becomes one red line and its exit code."""
    debug = "--debug" in sys.argv
    try:
        app()
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C into Exit(130) before we see it
            _fail("interrupted", 130)
        raise
    except MlboxError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code)
    except operational_errors() as exc:
        if debug:
            raise
        _fail(f"metadata store: {exc}", 7)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # a bug: say so in one line; --debug shows the traceback
        if debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)


__all__ = ["_common", "app", "run"]
