"""Optional dependencies stay optional: with tensorrt, matplotlib and onnxruntime unimportable,
every ``dyconv_deploy`` module imports and every ``dyconv-deploy <command> --help`` exits 0.

Runs in a subprocess whose meta-path finder raises ImportError for the blocked packages.
Commands are read from ``cli/main.py``'s ``_COMMANDS``, so new ones are covered automatically.
"""

import json
import subprocess
import sys
import textwrap

BLOCKED = ("tensorrt", "matplotlib", "onnxruntime")

SCRIPT = textwrap.dedent("""
    import contextlib, importlib, importlib.abc, io, json, pkgutil, sys, traceback

    BLOCKED = {blocked!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked by test_dependencies")
            return None

    sys.meta_path.insert(0, Blocker())
    results = {{"imports": {{}}, "help": {{}}}}
    for root in ("dyconv_deploy", "dyconv_deploy.cli", "dyconv_deploy.samples"):
        package = importlib.import_module(root)
        for info in pkgutil.walk_packages(package.__path__, root + "."):
            try:
                importlib.import_module(info.name)
                results["imports"][info.name] = None
            except BaseException:
                results["imports"][info.name] = traceback.format_exc()

    from dyconv_deploy.cli.main import _COMMANDS, main

    for command in [[]] + [[name] for name, _ in _COMMANDS]:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([*command, "--help"])
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            code, err = "exception", io.StringIO(traceback.format_exc())
        results["help"][" ".join(command) or "(root)"] = [code, out.getvalue(), err.getvalue()]
    print(json.dumps(results))
""").format(blocked=BLOCKED)


def test_modules_import_and_help_runs_without_optional_dependencies():
    process = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    results = json.loads(process.stdout.splitlines()[-1])
    failed_imports = {name: error for name, error in results["imports"].items() if error}
    assert not failed_imports, "\n".join(failed_imports.values())
    assert "dyconv_deploy.cli.inspect" in results["imports"]
    for command, (code, out, err) in results["help"].items():
        assert code == 0 and "Traceback" not in out + err, f"dyconv-deploy {command} --help: {code}\n{err}"
        assert "Usage" in out, command
