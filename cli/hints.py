"""Hints that are command lines: what to run next, written so that it runs as printed.

:func:`command_line` spells the command being run, with some parameters changed, from its parsed
context; :func:`rerun_hints` turns a library :class:`~dyconv_deploy.workflow.OptionConflict` into
one error line that names each fix as such a command.
"""

import shlex
from contextlib import contextmanager
from typing import Iterator

import typer

from dyconv_deploy.errors import DyconvError

PROGRAM = "dyconv-deploy"


def command_line(ctx: typer.Context, **changes) -> str:
    """``dyconv-deploy <command> ...``: the arguments of ``ctx``, its options that are not at their
    default, and ``changes`` (parameter name -> value), quoted for a POSIX shell."""
    values = {**ctx.params, **changes}
    words = [PROGRAM, ctx.info_name]
    for param in ctx.command.params:
        value = values[param.name]
        if param.param_type_name == "argument":
            words.append(str(value))
        elif value != param.default:
            words += _option_words(param, value)
    return shlex.join(words)


@contextmanager
def rerun_hints(ctx: typer.Context) -> Iterator[None]:
    """Re-raise an :class:`OptionConflict` as ``<reason>. Next: <command> or: <command>``."""
    from dyconv_deploy.workflow import OptionConflict

    try:
        yield
    except OptionConflict as exc:
        commands = " or: ".join(command_line(ctx, **fix) for fix in exc.fixes)
        raise DyconvError(f"{exc.reason}. Next: {commands}") from exc


def _option_words(option, value) -> list[str]:
    flag = max(option.opts, key=len)  # the long spelling
    if option.is_flag:
        return [flag] if value else list(option.secondary_opts[:1])
    if option.multiple:
        return [word for item in value for word in (flag, str(item))]
    return [flag, str(value)]
