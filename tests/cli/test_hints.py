"""Every hint the code can print parses as a command line of the CLI.

Hints are collected from the sources with :mod:`ast`, not listed by hand: each string literal
(f-string placeholders read as ``{}``) of ``dyconv_deploy/``, ``samples/`` and ``cli/`` that
names a ``--flag``, and each line of a docstring that starts with ``dyconv-deploy`` (the
commands' ``Examples:``, which ``--help`` prints). A whole command line is parsed as written;
a ``--flag`` in a message is parsed with the value the message gives it (or a sample value for
a placeholder such as ``N`` or ``{}``) by the command it names, else by any command that has
the flag. Parsing is typer's own (``make_context``): the command itself never runs.
"""

import ast
import re
import shlex
from pathlib import Path

import pytest
import typer

from dyconv_deploy.cli.hints import PROGRAM, command_line
from dyconv_deploy.cli.main import app, main

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "dyconv_deploy", ROOT / "samples", ROOT / "cli"]
CLI = typer.main.get_command(app)
COMMANDS = CLI.commands
# Messages that show other programs' command lines (the Triton server's docker run).
FOREIGN = ("docker run", "--backend-config=")
FLAG = re.compile(r"--[a-z][a-z0-9-]*")
VALUE = re.compile(r" [\w{./~`'\"(]")  # a space, then what can start a value (not "<=" or ")")
PLACEHOLDER = re.compile(r"^(\{\}|[A-Z][A-Z0-9_]*)(\W.*)?$")  # {} or N, FILE.py, NAME:DIMS, MIN,OPT,MAX


def rendered(node: ast.AST) -> str:
    """A string literal's text, each f-string placeholder as ``{}``."""
    if isinstance(node, ast.Constant):
        return node.value
    return "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)


def literals() -> list[tuple[str, str, bool]]:
    """``(file:line, text, is_docstring)`` of every string literal of the sources."""
    found = []
    for folder in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                          and node.body and isinstance(node.body[0], ast.Expr)
                          and isinstance(node.body[0].value, ast.Constant)}
            inner = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
            for node in ast.walk(tree):
                if (isinstance(node, ast.JoinedStr) or isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and id(node) not in inner):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", rendered(node),
                                  id(node) in docstrings))
    return found


def hint_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every whole command line a docstring shows."""
    return [(where, shlex.split(line.strip())[1:]) for where, text, docstring in literals() if docstring
            for line in text.splitlines() if line.strip().startswith(PROGRAM + " ")]


def flag_hints() -> list[tuple[str, str, str | None, str | None]]:
    """``(where, flag, the word after it, the command named right before it)`` in every message."""
    return [hint for where, text, docstring in literals() if not docstring
            # a lone flag is a declaration or an argv word (cmake, argparse), not a message
            and not FLAG.fullmatch(text) and not any(marker in text for marker in FOREIGN)
            for hint in flag_hints_of(text, where)]


def flag_hints_of(text: str, where: str = "") -> list[tuple[str, str, str | None, str | None]]:
    found = []
    for match in FLAG.finditer(text):
        before = text[:match.start()].split()
        after = text[match.end():]
        named = before[-1] if before and before[-1] in COMMANDS else None
        found.append((where, match.group(), after.split()[0] if VALUE.match(after) else None, named))
    return found


def parses(command: str, args: list[str]) -> None:
    """Raise typer's usage error unless ``dyconv-deploy <command> <args>`` parses."""
    COMMANDS[command].make_context(command, list(args))


def choices(option) -> tuple[str, ...]:
    """The values a ``Literal[...]`` option accepts (empty for a free one)."""
    values = getattr(option.type_descriptor.annotation, "__args__", ())
    return values if values and all(isinstance(value, str) for value in values) else ()


def sample(option) -> str:
    """A value of ``option``'s type for a placeholder."""
    if choices(option):
        return choices(option)[0]
    return "1" if option.type_descriptor.annotation in (int, float) else "x"


def required_args(command: str) -> list[str]:
    """Placeholder arguments and required options, so a flag can be parsed on its own."""
    args = []
    for param in COMMANDS[command].params:
        if param.param_type_name == "argument":
            args.append("x")
        elif param.required:
            args += [param.opts[0], "x"]
    return args


def flag_argv(command: str, flag: str, next_word: str | None) -> list[str] | None:
    """``flag`` as the message writes it, for ``command``; None when ``command`` has no such flag."""
    option = next((p for p in COMMANDS[command].params if flag in (*p.opts, *p.secondary_opts)), None)
    if option is None:
        return None
    word = None if next_word is None else next_word.strip("`'\"(").rstrip(".,;:)`'\"")
    is_placeholder = word is not None and (PLACEHOLDER.match(word) or word.isdigit())
    if option.is_flag:  # a value after a flag is a mistake the message makes (--static-batch N)
        return [flag, word] if is_placeholder else [flag]
    if word is not None and word.isalpha() and word.islower() and not choices(option):
        word = None  # prose ("--max-batch or --shapes"), not a value of a free option
    return [flag, sample(option) if word is None or is_placeholder else word]


def flag_problem(flag: str, next_word: str | None, named: str | None) -> str | None:
    """None when ``flag`` (and its value) parses for ``named`` or, if no command is named, for some
    command; else why not."""
    errors = []
    for command in [named] if named else COMMANDS:
        argv = flag_argv(command, flag, next_word)
        if argv is None:
            continue
        try:
            parses(command, required_args(command) + argv)
        except typer.TyperException as exc:  # a usage error
            errors.append(f"{command} {' '.join(argv)}: {exc}")
        else:
            return None
    return "; ".join(errors) or "no command has it"


def test_the_sources_have_hints_to_check():
    assert len(hint_commands()) >= 20 and len(flag_hints()) >= 30


@pytest.mark.parametrize("where, argv", hint_commands(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_example_command_parses(where, argv):
    assert argv[0] in COMMANDS, f"{where}: no command {argv[0]!r}"
    parses(argv[0], argv[1:])


def test_every_flag_a_message_names_parses_as_written():
    problems = [f"{where}: {flag} {next_word or ''} -> {problem}" for where, flag, next_word, named in flag_hints()
                if (problem := flag_problem(flag, next_word, named))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("hint, problem", [
    ("pass --static-batch 4", "unexpected extra argument"),
    ("pass --static-batch N", "unexpected extra argument"),
    ("use --exporter fold", "is not one of"),
    ("bench --exporter dynamo", "no command has it"),
    ("try --static-bach", "no command has it"),
    ("pass --opset N.", None),
    ("export --static-batch (the batch of --input-shape)", None),
    ("rebuild it with --max-batch or --shapes", None),
])
def test_the_flag_check_catches_bad_hints(hint, problem):
    where, flag, next_word, named = flag_hints_of(hint)[0]
    result = flag_problem(flag, next_word, named)
    assert result is None if problem is None else problem in result


def test_grouped_with_a_dynamic_batch_is_refused_before_loading_with_commands_that_run(tmp_path, capsys,
                                                                                      monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("dyconv_deploy.workflow.pipeline.load_model", no_work)
    out = tmp_path / "g.onnx"
    assert main(["export", "sample:tiny_dynamic", "-o", str(out), "--strategy", "grouped", "--adapter", "a b.py:C",
                 "--opset", "19"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    commands = err.split("Next: ", 1)[1].strip().split(" or: ")
    parsed = [COMMANDS["export"].make_context("export", shlex.split(c)[2:]).params for c in commands]
    assert [(p["strategy"], p["dynamic_batch"]) for p in parsed] == [("grouped", False), ("experts", True)]
    assert all(p["adapter"] == ["a b.py:C"] and p["opset"] == 19 and p["output"] == out for p in parsed)


def test_command_line_keeps_the_arguments_and_changed_options_only():
    ctx = COMMANDS["export"].make_context("export", ["m.py:f", "-o", "o.onnx", "--no-verify", "--atol", "0.01"])
    line = command_line(ctx, dynamic_batch=False)
    assert line == "dyconv-deploy export m.py:f --output o.onnx --static-batch --no-verify --atol 0.01"
