"""The `pullback` command: help, dump, compile, run, and one-line errors with exit codes.

Most tests call compiler.cli.main in-process (fast); a few run real processes to check
what a user sees (no traceback wall) and that `pullback run` never imports the compiler.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler.cli import EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE, CLIError, main
from compiler.models import load_model
from tests.examples.support import (
    EXAMPLES, ROOT, codegen_available, dot_available, example_path, parser_available, printer_available,
    require, require_ops, runtime_load_available,
)

CLI_FILE = ROOT / "compiler" / "cli.py"


def pullback(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("pullback: error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0][len("pullback: error: "):]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------- help
def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("dump", "compile", "run", "examples:", "exit codes", "loss(params, *data)"):
        assert word in out


@pytest.mark.parametrize("command, words", [
    ("dump", ["--stage", "forward", "backward", "optimized", "saved", "llvm", "asm", "--format", "--dump-dir",
              "--opt-level", "pullback dump examples/mlp.py"]),
    ("compile", ["-o OUT", "--opt-level", "pullback compile examples/mlp.py -o mlp.pbk"]),
    ("run", ["--calls", "--seed", "pullback run mlp.pbk"]),
])
def test_subcommand_help(capsys, command, words):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out, word


def test_no_command_prints_help_and_fails(capsys):
    code, out, err = pullback(capsys)
    assert code == EXIT_USAGE and "COMMAND" in out


@pytest.mark.parametrize("argv, fragment", [
    (["dump"], "the following arguments are required: MODEL"),
    (["dump", "x.py", "--stage", "nope"], "invalid choice: 'nope'"),
    (["dump", "x.py", "--opt-level", "7"], "must be 0, 1, 2 or 3, got 7"),
    (["compile", "x.py"], "the following arguments are required: -o/--output"),
    (["run", "a.pbk", "--calls", "0"], "must be a positive integer, got 0"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_errors(capsys, argv, fragment):
    code, out, err = pullback(capsys, *argv)
    assert code == EXIT_USAGE
    assert fragment in one_line_error(err)


def test_version(capsys):
    code, out, _ = pullback(capsys, "--version")
    assert code == 0 and out.startswith("pullback ")


# ------------------------------------------------------------------- dump
@pytest.mark.parametrize("name", EXAMPLES)
def test_dump_forward_text(capsys, name):
    require(printer_available(), "the IR printer (compiler.dump)")
    require_ops(name)
    code, out, err = pullback(capsys, "dump", example_path(name))
    assert code == 0, err
    assert out.lstrip().startswith("graph") or "\ngraph " in out
    assert out == compiler.dump(load_model(example_path(name)).trace()).rstrip("\n") + "\n"


@pytest.mark.parametrize("name", EXAMPLES)
def test_dump_forward_dot(capsys, name):
    require(dot_available(), "DOT export (compiler.to_dot)")
    require_ops(name)
    code, out, err = pullback(capsys, "dump", example_path(name), "--format", "dot")
    assert code == 0, err
    assert "graph" in out and "{" in out


def test_dump_backward(capsys):
    require(printer_available(), "the IR printer (compiler.dump)")
    require(hasattr(compiler, "value_and_grad"), "autodiff (compiler.value_and_grad)")
    code, out, err = pullback(capsys, "dump", example_path("chain_rule"), "--stage", "backward")
    assert code == 0, err
    assert out.count("\n") > 10


def test_dump_optimized_evaluates_like_backward(capsys, tmp_path):
    require(printer_available(), "the IR printer (compiler.dump)")
    code, out, err = pullback(capsys, "dump", example_path("mlp"), "--stage", "optimized", "--opt-level", "3")
    assert code == 0, err
    assert out.startswith("graph value_and_grad_mlp")
    out_dir = tmp_path / "d"
    code, out, err = pullback(capsys, "dump", example_path("mlp"), "--stage", "optimized", "--dump-dir", out_dir)
    assert code == 0, err
    assert {"01_forward.ir", "02_backward.ir", "03_optimized.ir", "03_passes.txt"} <= {p.name for p in out_dir.iterdir()}
    assert "total" in (out_dir / "03_passes.txt").read_text()
    if dot_available():
        assert (out_dir / "03_passes" / "000_input.txt").exists()


def test_dump_saved_activations(capsys):
    import importlib.util

    code, out, err = pullback(capsys, "dump", example_path("rnn"), "--stage", "saved")
    if importlib.util.find_spec("compiler.autodiff.saved") is None:
        assert code == EXIT_UNAVAILABLE
        assert one_line_error(err).startswith("stage 'saved' is not available: ")
        return
    assert code == 0, err
    assert "total saved:" in out and "rnn.py:" in out


def test_unknown_stage_with_a_graph_format_is_refused(capsys):
    code, out, err = pullback(capsys, "dump", example_path("chain_rule"), "--stage", "saved", "--format", "dot")
    assert code == EXIT_USAGE and out == ""


@pytest.mark.parametrize("stage, marker", [("llvm", "define"), ("asm", "")])
def test_dump_native_stages(capsys, stage, marker):
    code, out, err = pullback(capsys, "dump", example_path("chain_rule"), "--stage", stage, "--opt-level", "1")
    if not codegen_available():
        assert code == EXIT_UNAVAILABLE
        assert one_line_error(err).startswith(f"stage {stage!r} is not available: ")
        return
    assert code == 0, err
    assert marker in out and len(out) > 100


def test_dot_format_is_only_for_graph_stages(capsys):
    code, out, err = pullback(capsys, "dump", example_path("chain_rule"), "--stage", "asm", "--format", "dot")
    assert code == EXIT_USAGE
    assert "--format dot applies to the graph stages" in one_line_error(err)


def test_dump_dir_writes_numbered_files(capsys, tmp_path):
    require(printer_available(), "the IR printer (compiler.dump)")
    require(hasattr(compiler, "value_and_grad"), "autodiff (compiler.value_and_grad)")
    out_dir = tmp_path / "dumps"
    code, out, err = pullback(capsys, "dump", example_path("chain_rule"), "--stage", "backward", "--dump-dir", out_dir)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["01_forward.ir", "02_backward.ir"]
    assert f"wrote {out_dir / '01_forward.ir'}" in out
    forward = compiler.dump(load_model(example_path("chain_rule")).trace())
    assert (out_dir / "01_forward.ir").read_text().rstrip("\n") == forward.rstrip("\n")


def test_dump_dir_writes_every_stage(capsys, tmp_path):
    require(printer_available(), "the IR printer (compiler.dump)")
    require(codegen_available(), "the code generator (compiler.codegen)")
    out_dir = tmp_path / "dumps"
    code, out, err = pullback(capsys, "dump", example_path("chain_rule"), "--stage", "asm", "--dump-dir", out_dir)
    assert code == 0, err
    names = {p.name for p in out_dir.iterdir()}
    assert {"01_forward.ir", "02_backward.ir", "03_optimized.ir", "03_passes.txt", "03_passes", "04_saved.txt",
            "05_llvm.ll", "06_asm.s"} <= names, names
    assert "define" in (out_dir / "05_llvm.ll").read_text()
    assert (out_dir / "03_passes" / "000_input.txt").exists()


def test_ir_text_file_as_model(capsys, tmp_path):
    ir_file = tmp_path / "chain.ir"
    if not parser_available():
        ir_file.write_text("# saved by hand\ngraph chain_rule(%x: f32[]) {\n}\n")
        code, out, err = pullback(capsys, "dump", ir_file)
        assert code == EXIT_UNAVAILABLE
        assert "compiler.parse" in one_line_error(err)
        return
    text = compiler.dump(load_model(example_path("chain_rule")).trace())
    ir_file.write_text("# saved by hand\n" + text)
    code, out, err = pullback(capsys, "dump", ir_file)
    assert code == 0, err
    assert out.rstrip("\n") == text.rstrip("\n")
    code, out, err = pullback(capsys, "dump", ir_file, "--stage", "backward")
    assert code == 0, err
    expected = compiler.dump(compiler.value_and_grad(load_model(example_path("chain_rule")).trace()))
    assert out.rstrip("\n") == expected.rstrip("\n")


def test_corrupt_ir_text_file(capsys, tmp_path):
    require(parser_available(), "the IR parser (compiler.parse)")
    ir_file = write(tmp_path, "broken.ir", "graph broken\n  in_tree (*,)\n  out_tree *\n  %x = input : f32[3] param\n"
                    "  %0 = frobnicate(%x) : f32[3]\n  return %0\n")
    code, out, err = pullback(capsys, "dump", ir_file)
    assert code == EXIT_USAGE
    message = one_line_error(err)
    assert message.startswith(f"{ir_file}: ") and "frobnicate" in message, message


# ---------------------------------------------------------- model errors
BAD_MODELS = {
    "name_error.py": ("import numpy\nprint(undefined)\n", r"name_error.py:2: NameError: name 'undefined' is not defined"),
    "syntax.py": ("def loss(params:\n", r"syntax.py: SyntaxError: .* \(line 1\)"),
    "no_loss.py": ("def specs():\n    return ()\n", r"no_loss.py: a model file must define loss\(\)"),
    "no_specs.py": ("def loss(p):\n    return p\n", r"no_specs.py: a model file must define specs\(\)"),
    "trace_fails.py": (
        "from compiler import Spec, ops\n"
        "def loss(params):\n"
        "    return ops.sum(ops.exp(params) @ params)\n"
        "def specs():\n"
        "    return (Spec((3, 2)),)\n",
        r"trace_fails.py:3: tracing loss: ShapeError: ",
    ),
    "vector_loss.py": (
        "from compiler import Spec\n"
        "def loss(params):\n"
        "    return params * 2.0\n"
        "def specs():\n"
        "    return (Spec((3,)),)\n",
        r"vector_loss.py: loss must return a float scalar, got f32\[3\]",
    ),
}


@pytest.mark.parametrize("command", ["dump", "compile"])
@pytest.mark.parametrize("file_name", sorted(BAD_MODELS))
def test_bad_model_files(capsys, tmp_path, command, file_name):
    source, pattern = BAD_MODELS[file_name]
    path = write(tmp_path, file_name, source)
    extra = ["-o", tmp_path / "out.pbk"] if command == "compile" else []
    code, out, err = pullback(capsys, command, path, *extra)
    assert code == EXIT_USAGE, err
    message = one_line_error(err)
    assert message.startswith(str(path)), message
    assert re.search(pattern, message), message
    assert not (tmp_path / "out.pbk").exists()


def test_missing_model_file(capsys, tmp_path):
    code, out, err = pullback(capsys, "dump", tmp_path / "nope.py")
    assert code == EXIT_USAGE
    assert one_line_error(err) == f"{tmp_path / 'nope.py'}: no such file"


def test_traceback_flag_shows_the_exception(capsys, tmp_path):
    path = write(tmp_path, "bad.py", *BAD_MODELS["name_error.py"][:1])
    with pytest.raises(CLIError) as info:
        main(["dump", str(path), "--traceback"])
    assert isinstance(info.value.__cause__.__cause__, NameError)
    with pytest.raises(CLIError):
        main(["--traceback", "dump", str(path)])


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    path = write(tmp_path, "bad.py", BAD_MODELS["name_error.py"][0])
    result = subprocess.run([sys.executable, "-m", "compiler.cli", "dump", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_USAGE
    assert result.stderr == f"pullback: error: {path}:2: NameError: name 'undefined' is not defined\n"
    assert result.stdout == ""


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "pullback"
    if not script.exists():
        pytest.skip("the pullback console script is not installed next to this interpreter")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: pullback" in result.stdout


# ------------------------------------------------------------ compile, run
@pytest.mark.parametrize("name", ["chain_rule", "mlp"])
def test_compile_then_run(capsys, tmp_path, name):
    require(codegen_available(), "the code generator (compiler.codegen)")
    require(runtime_load_available(), "the runtime loader (runtime.load)")
    import runtime
    from compiler.cli import _random_input
    from runtime.pytree import treedef_from_text, unflatten

    artifact = tmp_path / f"{name}.pbk"
    code, out, err = pullback(capsys, "compile", example_path(name), "-o", artifact, "--opt-level", "1")
    assert code == 0, err
    data = artifact.read_bytes()
    assert f"wrote {artifact}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}" in out
    assert re.search(r"compiled in [0-9.]+ s \(trace [0-9.]+ s, autodiff [0-9.]+ s, codegen -O1 [0-9.]+ s\)", out)

    code, out, err = pullback(capsys, "run", artifact, "--calls", "5", "--seed", "4")
    assert code == 0, err
    match = re.search(r"loss = (\S+)", out)
    assert match and re.search(r"5 calls: median [0-9.e+]+ [num]?s \(p10 .*s, p90 .*s\)", out), out
    # The same random inputs, through the interpreter.
    manifest = runtime.read_manifest(artifact)
    rng = np.random.default_rng(4)
    arrays = [_random_input(rng, entry) for entry in manifest["inputs"]]
    args = unflatten(treedef_from_text(manifest["in_tree"]), arrays)
    expected = compiler.evaluate(load_model(example_path(name)).trace(), *args)
    np.testing.assert_allclose(float(match.group(1)), float(expected), rtol=1e-4)


def test_profile_names_the_kernels_of_the_step(capsys):
    require(codegen_available(), "the code generator (compiler.codegen)")
    code, out, err = pullback(capsys, "profile", example_path("mlp"), "--calls", "3", "--top", "4")
    assert code == 0, err
    header, *rest = out.splitlines()
    assert re.match(r"value_and_grad_mlp: [0-9.]+ us per call in native code \(15 calls, [0-9]+ steps", header), header
    assert "by kernel function:" in out and re.search(r"k\.matmul\.\d+ +matmul, 64x64, 64x64 -> 64x64", out), out
    assert re.search(r"by op: .*matmul", out)
    code, out, err = pullback(capsys, "profile", example_path("no_such_model"))
    assert code != 0 and "no_such_model" in one_line_error(err)


def test_compile_to_a_missing_directory(capsys, tmp_path):
    require(codegen_available(), "the code generator (compiler.codegen)")
    code, out, err = pullback(capsys, "compile", example_path("chain_rule"), "-o", tmp_path / "no" / "such" / "x.pbk")
    assert code == EXIT_USAGE
    assert "does not exist" in one_line_error(err)


@pytest.mark.parametrize("argv, stage", [
    (["dump", "--stage", "llvm"], "llvm"), (["dump", "--stage", "asm"], "asm"), (["compile", "-o", "x.pbk"], "compile"),
])
def test_missing_pieces_are_reported_not_crashed(capsys, monkeypatch, tmp_path, argv, stage):
    monkeypatch.setitem(sys.modules, "compiler.codegen", None)  # as if codegen were not written
    monkeypatch.chdir(tmp_path)
    code, out, err = pullback(capsys, argv[0], example_path("chain_rule"), *argv[1:])
    assert code == EXIT_UNAVAILABLE
    assert one_line_error(err) == f"stage {stage!r} is not available: the code generator (compiler.codegen) is not written yet"
    assert not (tmp_path / "x.pbk").exists()


def test_placeholder_printer_is_reported_as_unavailable(capsys, monkeypatch):
    import compiler.ir.printer

    def placeholder(graph):
        raise NotImplementedError("printer not written yet")

    monkeypatch.setattr(compiler.ir.printer, "dump", placeholder)
    code, out, err = pullback(capsys, "dump", example_path("chain_rule"))
    assert code == EXIT_UNAVAILABLE
    assert one_line_error(err) == ("stage 'forward' is not available: the IR printer is not written yet "
                                   "(printer not written yet)")


@pytest.mark.parametrize("content", [b"", b"not an artifact at all", b"PULLBACK\x01\x00\x00\x00garbage"])
def test_run_rejects_corrupt_artifacts(capsys, tmp_path, content):
    artifact = tmp_path / "bad.pbk"
    artifact.write_bytes(content)
    code, out, err = pullback(capsys, "run", artifact)
    if not runtime_load_available():
        assert code == EXIT_UNAVAILABLE and "runtime.load" in one_line_error(err)
        return
    assert code == EXIT_USAGE, err
    assert one_line_error(err).startswith(str(artifact))


def test_run_missing_artifact(capsys, tmp_path):
    code, out, err = pullback(capsys, "run", tmp_path / "none.pbk")
    if runtime_load_available():
        assert code == EXIT_USAGE
        assert one_line_error(err) == f"{tmp_path / 'none.pbk'}: no such file"
    else:
        assert code == EXIT_UNAVAILABLE


def test_run_never_imports_the_compiler(tmp_path):
    # Load cli.py as a stand-alone module (not through the compiler package) and run it:
    # the run path must need nothing but the runtime.
    artifact = tmp_path / "bad.pbk"
    artifact.write_bytes(b"not an artifact")
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("standalone_cli", {str(CLI_FILE)!r})
        cli = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cli)
        code = cli.main(["run", {str(artifact)!r}])
        leaked = sorted(m for m in sys.modules if m == "compiler" or m.startswith(("compiler.", "networkx")))
        print(code, leaked)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    code, leaked = result.stdout.split(" ", 1)
    assert leaked.strip() == "[]"
    assert int(code) in (EXIT_USAGE, EXIT_UNAVAILABLE)
    assert "Traceback" not in result.stderr


def test_internal_errors_are_one_line_too(capsys, monkeypatch):
    import compiler.cli as cli

    def broken(args):
        raise RuntimeError("something deep broke\nsecond line")

    monkeypatch.setattr(cli, "cmd_dump", broken)
    code, out, err = pullback(capsys, "dump", example_path("chain_rule"))
    assert code == EXIT_FAILURE
    assert one_line_error(err) == "internal error: RuntimeError: something deep broke (rerun with --traceback for details)"


# --------------------------------------- run, on hand-written native kernels
# A training-step-shaped kernel without the code generator: (params {'w'}, x) ->
# (loss = sum(w * x), {'w': x}); the status input makes the failure path testable.
STEP_IR = r"""
define i32 @step(ptr %ins, ptr %outs, ptr %ws) {
entry:
  %w = load ptr, ptr %ins
  %xp = getelementptr ptr, ptr %ins, i64 1
  %x = load ptr, ptr %xp
  %lossp = load ptr, ptr %outs
  %gp = getelementptr ptr, ptr %outs, i64 1
  %g = load ptr, ptr %gp
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%n, %loop]
  %acc = phi float [0.0, %entry], [%acc2, %loop]
  %pw = getelementptr float, ptr %w, i64 %i
  %px = getelementptr float, ptr %x, i64 %i
  %vw = load float, ptr %pw
  %vx = load float, ptr %px
  %m = fmul float %vw, %vx
  %acc2 = fadd float %acc, %m
  %pg = getelementptr float, ptr %g, i64 %i
  store float %vx, ptr %pg
  %n = add i64 %i, 1
  %c = icmp ult i64 %n, 4
  br i1 %c, label %loop, label %done
done:
  store float %acc2, ptr %lossp
  ret i32 STATUS
}
"""


def _step_artifact(tmp_path, status=0):
    runtime = pytest.importorskip("runtime")
    test_kernel = pytest.importorskip("tests.runtime.test_kernel")
    manifest = runtime.make_manifest(
        name="step", symbol="step",
        inputs=[{"name": "params.w", "shape": [4], "dtype": "float32", "kind": "param"},
                {"name": "x", "shape": [4], "dtype": "float32", "kind": "data"}],
        outputs=[{"name": "loss", "shape": [], "dtype": "float32"},
                 {"name": "grad.w", "shape": [4], "dtype": "float32"}],
        in_tree="({'w': *}, *)", out_tree="(*, {'w': *})",
    )
    kernel = runtime.Kernel.from_parts(manifest, test_kernel.build_object(STEP_IR.replace("STATUS", str(status))))
    path = tmp_path / "step.pbk"
    kernel.save(path)
    return path


def test_run_prints_the_loss_and_call_times(capsys, tmp_path):
    require(runtime_load_available(), "the runtime loader (runtime.load)")
    artifact = _step_artifact(tmp_path)
    code, out, err = pullback(capsys, "run", artifact, "--calls", "7", "--seed", "3")
    assert code == 0, err
    rng = np.random.default_rng(3)
    w, x = (rng.standard_normal(4).astype(np.float32) for _ in range(2))
    match = re.search(r"^step: loss = (\S+) \(2 outputs, inputs seeded with 3\)$", out, re.M)
    assert match, out
    np.testing.assert_allclose(float(match.group(1)), float(np.sum(w * x)), rtol=1e-5)
    assert re.search(r"^7 calls: median [0-9.e+]+ [num]?s \(p10 [0-9.e+]+ [num]?s, p90 [0-9.e+]+ [num]?s\)$", out, re.M), out


def test_run_reports_a_failing_kernel_as_a_runtime_failure(capsys, tmp_path):
    require(runtime_load_available(), "the runtime loader (runtime.load)")
    artifact = _step_artifact(tmp_path, status=9)
    code, out, err = pullback(capsys, "run", artifact)
    assert code == EXIT_FAILURE
    message = one_line_error(err)
    assert message.startswith(f"{artifact}: KernelError: "), message
    assert "9" in message


def test_run_rejects_a_tampered_artifact(capsys, tmp_path):
    require(runtime_load_available(), "the runtime loader (runtime.load)")
    artifact = _step_artifact(tmp_path)
    data = bytearray(artifact.read_bytes())
    data[40] ^= 0xFF
    artifact.write_bytes(bytes(data))
    code, out, err = pullback(capsys, "run", artifact)
    assert code == EXIT_USAGE
    assert one_line_error(err).startswith(f"{artifact}")
