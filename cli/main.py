"""``dyconv-deploy``: the typer app and the one place errors become exit codes.

Each subcommand is a function in its own module ``cli/<command>.py``; :data:`_COMMANDS`
registers them. A :class:`~dyconv_deploy.errors.DyconvError` prints one line on stderr
and exits with its code (2 bad input, 1 failed verification); ``-v`` adds tracebacks.
"""

import atexit
import importlib
import logging
import os
import sys

import typer

from dyconv_deploy import __version__
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.io.artifacts import cleanup_on_signals

# (command name, "module:function") — modules are imported only when registered, and each
# imports its heavy dependencies lazily inside the function.
_COMMANDS = [
    ("demo", "dyconv_deploy.cli.demo:demo_command"),
    ("inspect", "dyconv_deploy.cli.inspect:inspect_command"),
    ("export", "dyconv_deploy.cli.export:export_command"),
    ("verify", "dyconv_deploy.cli.verify:verify_command"),
    ("bench", "dyconv_deploy.cli.bench:bench_command"),
    ("build-plugin", "dyconv_deploy.cli.build_plugin:build_plugin_command"),
    ("build-engine", "dyconv_deploy.cli.build_engine:build_engine_command"),
    ("triton-repo", "dyconv_deploy.cli.triton_repo:triton_repo_command"),
]

app = typer.Typer(
    name="dyconv-deploy",
    help="Deploy PyTorch models with dynamic convolutions (DynamicConv, CondConv, ODConv, DyNet, DyReLU) "
         "to ONNX, ONNX Runtime and TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"verbose": False}
_PIPED_COLUMNS = 160  # table width when stdout is no terminal (COLUMNS, where set, wins)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dyconv-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs and full tracebacks."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print warnings and errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _state["verbose"] = verbose
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dyconv_deploy").setLevel(level)


def _register() -> None:
    for name, target in _COMMANDS:
        module_name, function_name = target.split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        app.command(name)(function)


_register()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    _state["verbose"] = "-v" in args or "--verbose" in args
    if not sys.stdout.isatty():  # a log, a pipe, CI: rich would fold every table into 80 columns
        os.environ.setdefault("COLUMNS", str(_PIPED_COLUMNS))
    try:
        with cleanup_on_signals():  # SIGINT/SIGTERM remove half-written outputs
            result = app(args=args, prog_name="dyconv-deploy", standalone_mode=False)
    except DyconvError as exc:
        if _state["verbose"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        exc.show()
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    return result if isinstance(result, int) else 0


def run() -> None:
    """The ``dyconv-deploy`` console script: :func:`main`, then exit without the interpreter's teardown.

    Tearing down torch's modules takes 0.4-1 s at the end of every command; the exit steps that
    matter (atexit handlers, e.g. temporary-file cleanup, logging handlers, stdout/stderr) run first.
    """
    code = main()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (dyconv-deploy ... | head): nothing left to write to
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
