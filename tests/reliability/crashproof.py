"""Run code in a fresh interpreter and check it failed cleanly, never crashed.

A crash is anything a Python exception handler cannot see: a signal (segfault, abort from
`LLVM ERROR: ...`, an OOM kill), a fatal interpreter error, or a hang. A clean failure is
a non-zero exit whose stderr is ONE line naming the problem, with no traceback.

    result = crashproof(guarded("runtime.load(sys.argv[1])", "runtime.ArtifactError"), path)
    assert_clean_error(result, match="truncated")

`guarded(body, catch)` wraps a snippet so an expected exception becomes exactly that kind
of one-line failure (`ArtifactError: <message>`, exit 2) and success prints `OK` (exit 0);
any other exception leaves a traceback, which assert_clean_error rejects.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CRASH_MARKERS = ("Fatal Python error", "LLVM ERROR", "Segmentation fault", "core dumped", "Aborted")
GUARDED_EXIT = 2


def pullback_command() -> list[str]:
    """The installed `pullback` script of this venv, else `python -m compiler.cli`."""
    script = Path(PYTHON).with_name("pullback")
    if script.exists():
        return [str(script)]
    found = shutil.which("pullback")
    return [found] if found else [PYTHON, "-m", "compiler.cli"]


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PULLBACK_NO_CACHE", "1")  # a child never reads or writes a shared cache
    env.pop("PULLBACK_DEBUG", None)
    env.update(extra or {})
    return env


def run(argv: Sequence[str], *, timeout: float = 180, cwd: str | os.PathLike | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run argv; a hang (timeout) fails the test with what the child printed so far."""
    try:
        return subprocess.run(list(argv), cwd=cwd or ROOT, env=_env(env), capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"hung: {' '.join(map(str, argv))[:200]} did not finish in {timeout} s; stderr: {out[-2000:]}")


def run_python(code: str, *argv: str, timeout: float = 180, cwd: str | os.PathLike | None = None,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -X faulthandler -c code argv...` (faulthandler: a crash prints where it happened)."""
    return run([PYTHON, "-X", "faulthandler", "-c", textwrap.dedent(code), *map(str, argv)],
               timeout=timeout, cwd=cwd, env=env)


def run_cli(*args: str, timeout: float = 300, cwd: str | os.PathLike | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    return run([*pullback_command(), *map(str, args)], timeout=timeout, cwd=cwd, env=env)


def describe(result: subprocess.CompletedProcess) -> str:
    code = result.returncode
    how = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.Signals._value2member_map_ else f"exit {code}"
    return f"{how}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"


def crashed(result: subprocess.CompletedProcess) -> bool:
    code = result.returncode
    # 134/139 = 128 + SIGABRT/SIGSEGV when a shell reports a signal
    return code < 0 or code in (134, 137, 139) or any(marker in result.stderr for marker in CRASH_MARKERS)


def assert_not_crashed(result: subprocess.CompletedProcess) -> None:
    assert not crashed(result), f"the process CRASHED: {describe(result)}"


def crashproof(code: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    """run_python + assert_not_crashed."""
    result = run_python(code, *argv, **kwargs)
    assert_not_crashed(result)
    return result


def assert_clean_error(result: subprocess.CompletedProcess, match: str | None = None,
                       code: int | None = None) -> str:
    """Not crashed, failed (exit `code` if given, else any non-zero), stderr one line, no
    traceback; `match` is searched in that line. Returns the line."""
    assert_not_crashed(result)
    assert result.returncode != 0, f"expected a failure, the process succeeded: {describe(result)}"
    if code is not None:
        assert result.returncode == code, f"expected exit {code}: {describe(result)}"
    assert "Traceback" not in result.stderr, f"a traceback leaked: {describe(result)}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error on stderr, got {len(lines)} lines: {describe(result)}"
    if match is not None:
        assert re.search(match, lines[0]), f"error line does not match {match!r}: {lines[0]!r}"
    return lines[0]


def assert_ok(result: subprocess.CompletedProcess) -> str:
    assert_not_crashed(result)
    assert result.returncode == 0, f"expected success: {describe(result)}"
    return result.stdout


def guarded(body: str, catch: str = "Exception", prelude: str = "") -> str:
    """A snippet: imports, `prelude`, then `body`; the expected exception `catch` (a dotted
    name or a tuple expression) becomes a one-line exit 2, success prints OK."""
    body = textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
    return (
        "import sys, os, json\nimport numpy as np\nimport runtime\n"
        + textwrap.dedent(prelude).strip("\n") + "\n"
        + "try:\n" + body + "\n"
        + f"except ({catch}) as exc:\n"
        + f"    sys.stderr.write(f'{{type(exc).__name__}}: {{exc}}\\n'); sys.exit({GUARDED_EXIT})\n"
        + "else:\n    print('OK')\n"
    )
