"""Hostile model files through the `pullback` command, each in a fresh process: a clear
one-line `pullback: error: ...` on stderr, exit 2 (bad input), never a traceback or a crash."""
from __future__ import annotations

import os
import re
import textwrap

import pytest

from tests.reliability.crashproof import assert_clean_error, assert_not_crashed, assert_ok, run_cli

HEADER = "from compiler import Spec, ops\n"
GOOD_SPECS = "def specs():\n    return (Spec((3,)),)\n"
GOOD_LOSS = "def loss(p):\n    return ops.sum(ops.square(p))\n"


def model(body: str, specs: str = GOOD_SPECS, header: str = HEADER) -> str:
    return header + textwrap.dedent(body) + "\n" + specs


def specs_returning(expression: str) -> str:
    return model(GOOD_LOSS, f"def specs():\n    return {expression}\n")


CASES = {
    # the file itself
    "syntax_error": ("def loss(p:\n", r"syntax_error\.py: SyntaxError: .*\(line 1\)"),
    "null_bytes": ("x = 1\x00\n", r"null_bytes\.py: SyntaxError"),
    "bad_indent": ("def loss(p):\nreturn p\n", r"IndentationError|SyntaxError"),
    "import_error": ("import numpy_does_not_exist_pullback\n",
                     r"import_error\.py:1: ModuleNotFoundError: No module named 'numpy_does_not_exist_pullback'"),
    "raises_at_import": ("raise ValueError('bad config\\nsecond line')\n", r"raises_at_import\.py:1: ValueError: bad config$"),
    "recursion_at_import": ("def f():\n    return f()\nf()\n", r"recursion_at_import\.py:\d+: RecursionError"),
    "exit_at_import": ("import sys\nsys.exit(3)\n", r"exit_at_import\.py:2: SystemExit: 3"),
    # the convention
    "no_loss": (HEADER + GOOD_SPECS, r"must define loss\(\)"),
    "no_specs": (HEADER + GOOD_LOSS, r"must define specs\(\)"),
    "nothing": ("x = 1\n", r"must define loss\(\) and specs\(\)"),
    "not_callable": ("loss = 3\nspecs = [1]\n", r"must define loss\(\) and specs\(\)"),
    "init_params_not_callable": (model(GOOD_LOSS) + "init_params = 4\n", r"init_params must be a function, got int"),
    "arity": (model("def loss(p, x, y):\n    return ops.sum(p)\n"),
              r"specs\(\) returns 1 spec tree\(s\) but loss\(p, x, y\) does not take 1"),
    # loss misbehaving
    "loss_raises": (model("def loss(p):\n    raise RuntimeError('boom\\nsecond line')\n"),
                    r"loss_raises\.py:3: tracing loss: RuntimeError: boom$"),
    "loss_memory_error": (model("def loss(p):\n    raise MemoryError()\n"), r"tracing loss: MemoryError"),
    "loss_non_scalar": (model("def loss(p):\n    return ops.exp(p)\n"), r"loss must return a float scalar, got f32\[3\]"),
    "loss_tuple": (model("def loss(p):\n    return ops.sum(p), ops.sum(p)\n"), r"loss must return one scalar tensor"),
    "loss_dict": (model("def loss(p):\n    return {'a': ops.sum(p)}\n"), r"loss must return one scalar tensor"),
    "loss_none": (model("def loss(p):\n    return None\n"), r"returned no tensors"),
    "loss_string": (model("def loss(p):\n    return 'a string'\n"), r"tracing loss: .*str"),
    "loss_int": (model("def loss(p):\n    return ops.sum(ops.cast(p, 'int32'))\n"), r"float scalar, got i32\[\]"),
    "loss_bool": (model("def loss(p):\n    return ops.sum(p) > 0\n"), r"float scalar, got bool\[\]"),
    "loss_infinite_recursion": (model("def f(x):\n    return f(x + 1)\ndef loss(p):\n    return f(p)\n"),
                                r"loss_infinite_recursion\.py:?\d*: tracing loss: .*[Rr]ecursion"),
    "loss_python_branch": (model("def loss(p):\n    if ops.sum(p) > 0:\n        return ops.sum(p)\n    return -ops.sum(p)\n"),
                           r"TraceError: .*ops\.where"),
    "loss_float_of_tensor": (model("def loss(p):\n    return ops.sum(p) * float(ops.sum(p))\n"), r"TraceError: .*float\(\)"),
    "loss_numpy_on_tensor": (model("import numpy as np\ndef loss(p):\n    return np.sum(np.exp(p))\n"),
                             r"TraceError: .*numpy array"),
    "loss_shape_error": (model("def loss(p):\n    return ops.sum(p @ p.reshape(3, 1, 1, 5))\n"),
                         r"shape_error\.py:3: tracing loss: ShapeError: reshape"),
    "loss_bad_axis": (model("def loss(p):\n    return ops.sum(p, axis=7)\n"), r"ShapeError: sum: axis 7 is out of bounds"),
    # specs misbehaving
    "specs_none": (specs_returning("None"), r"specs\(\) must return a non-empty tuple .*got NoneType"),
    "specs_int": (specs_returning("42"), r"must return a non-empty tuple .*got int"),
    "specs_empty": (specs_returning("()"), r"must return a non-empty tuple"),
    "specs_string": (specs_returning("'abc'"), r"must return a non-empty tuple .*got str"),
    "specs_object": (specs_returning("(object(),)"),
                     r"spec leaves must be compiler\.Spec or numpy arrays, got object"),
    "specs_complex": (specs_returning("(Spec((3,), 'complex64'),)"), r"unsupported dtype 'complex64'"),
    "specs_negative": (specs_returning("(Spec((-1,)),)"),
                       r"specs\(\): ShapeError: Spec shape must be .*non-negative"),
    "specs_float_dims": (specs_returning("(Spec((2.5,)),)"), r"ShapeError: Spec shape"),
    "specs_bad_kind": (specs_returning("(Spec((3,), kind='weights'),)"), r"kind must be"),
    "specs_raises": (specs_returning("{}['missing']"), r"specs\(\): KeyError: 'missing'"),
    "specs_deep": (model(GOOD_LOSS, "def specs():\n    t = Spec((3,))\n    for _ in range(100000):\n"
                         "        t = [t]\n    return (t,)\n"),
                   r"RecursionError|nested"),
    "specs_cyclic": (model(GOOD_LOSS, "def specs():\n    l = [Spec((3,))]\n    l.append(l)\n    return (l,)\n"),
                     r"RecursionError|cycl"),
    "specs_int_param_backward": (model("def loss(p):\n    return ops.sum(ops.cast(p, 'float32'))\n",
                                       "def specs():\n    return (Spec((3,), 'int32'),)\n"), None),
}
# cases whose first line is checked at the backward stage instead
BACKWARD = {"specs_int_param_backward": r"cannot differentiate with respect to input 'p' of dtype int32"}

# BaseException from user code (SystemExit, custom BaseException subclasses) and exceptions
# whose __str__ raises blame the model too; only KeyboardInterrupt stops pullback itself.
CASES.update({
    "loss_system_exit": (model("def loss(p):\n    raise SystemExit('bye')\n"),
                         r"loss_system_exit\.py:3: tracing loss: SystemExit: bye$"),
    "loss_base_exception": (model("class Weird(BaseException):\n    pass\ndef loss(p):\n    raise Weird('odd')\n"),
                            r"loss_base_exception\.py:5: tracing loss: Weird: odd$"),
    "loss_sys_exit_zero": (model("import sys\ndef loss(p):\n    sys.exit(0)\n"),
                           r"loss_sys_exit_zero\.py:4: tracing loss: SystemExit"),
    "loss_generator_exit": (model("def loss(p):\n    raise GeneratorExit('gen')\n"),
                            r"loss_generator_exit\.py:3: tracing loss: GeneratorExit: gen$"),
    "specs_system_exit": (model(GOOD_LOSS, "def specs():\n    raise SystemExit(5)\n"), r"specs\(\): SystemExit: 5$"),
    "loss_unprintable_exception": (
        model("class E(Exception):\n    def __str__(self):\n        raise ValueError('str fails')\n"
              "def loss(p):\n    raise E()\n"), r"loss_unprintable_exception\.py:\d+: tracing loss: E: <unprintable E>$"),
    "specs_unprintable_base_exception": (
        model(GOOD_LOSS, "class B(BaseException):\n    def __str__(self):\n        raise SystemExit(1)\n"
                         "def specs():\n    raise B()\n"), r"specs\(\): B: <unprintable B>$"),
})


def write(tmp_path, name: str, source: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_bytes(source.encode("utf-8"))
    return str(path.name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_model_is_one_clear_line(tmp_path, name):
    source, pattern = CASES[name]
    path = write(tmp_path, name, source)
    if name in BACKWARD:
        result = run_cli("dump", path, "--stage", "backward", cwd=tmp_path)
        line = assert_clean_error(result, BACKWARD[name], code=2)
    else:
        result = run_cli("dump", path, cwd=tmp_path)
        line = assert_clean_error(result, pattern, code=2)
    assert line.startswith(f"pullback: error: {path}"), line


@pytest.mark.parametrize("where", ["loss", "specs"])
def test_keyboard_interrupt_in_user_code_exits_130_quietly(tmp_path, where):
    body = "def {}(*args):\n    raise KeyboardInterrupt\n"
    source = model(body.format("loss"), GOOD_SPECS) if where == "loss" else model(GOOD_LOSS, body.format("specs"))
    path = write(tmp_path, f"interrupted_{where}", source)
    result = run_cli("dump", path, cwd=tmp_path)
    assert_not_crashed(result)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr


def test_base_exception_in_make_batch_and_init_params_blames_the_model(tmp_path):
    from compiler.models import ModelError, load_model

    source = model(GOOD_LOSS) + "def init_params(seed):\n    raise SystemExit(7)\n"
    path = tmp_path / "exits_in_init.py"
    path.write_text(source)
    with pytest.raises(ModelError, match=r"exits_in_init\.py:\d+: init_params\(\): SystemExit: 7$"):
        load_model(str(path)).example_args()
    source = (model(GOOD_LOSS, "def specs():\n    return (Spec((3,)), Spec((2,)))\n")
              .replace("def loss(p):", "def loss(p, x):") + "def make_batch(seed):\n    raise SystemExit\n")
    path = tmp_path / "exits_in_batch.py"
    path.write_text(source)
    with pytest.raises(ModelError, match=r"exits_in_batch\.py:\d+: make_batch\(\): SystemExit$"):
        load_model(str(path)).example_args()


def test_keyboard_interrupt_at_import_exits_130_quietly(tmp_path):
    path = write(tmp_path, "interrupted", "raise KeyboardInterrupt\n")
    result = run_cli("dump", path, cwd=tmp_path)
    assert_not_crashed(result)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("setup, pattern", [
    (lambda d: None, r"missing\.py: no such file"),
    (lambda d: (d / "missing.py").mkdir(), r"is a directory"),
    (lambda d: (d / "missing.py").write_bytes(b"\xff\xfe\xfa garbage \x00"), r"SyntaxError"),
    (lambda d: (d / "missing.py").write_bytes(b""), r"must define loss\(\) and specs\(\)"),
])
def test_missing_empty_or_foreign_model_file(tmp_path, setup, pattern):
    setup(tmp_path)
    result = run_cli("dump", "missing.py", cwd=tmp_path)
    assert_clean_error(result, pattern, code=2)


def test_fifo_model_file_is_refused_not_waited_on(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    for name in ("pipe.py", "pipe.ir"):
        os.mkfifo(tmp_path / name)
        result = run_cli("dump", name, cwd=tmp_path, timeout=10)
        assert_clean_error(result, rf"{re.escape(name)}: not a regular file", code=2)


def test_device_model_file_is_refused_not_read_forever(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    result = run_cli("dump", "/dev/zero", cwd=tmp_path, timeout=30)
    assert_clean_error(result, r"/dev/zero: not a regular file", code=2)
    from compiler.models import is_ir_text

    assert not is_ir_text("/dev/zero")


def test_ir_detection_reads_a_bounded_prefix(tmp_path):
    from compiler.models import is_ir_text

    path = tmp_path / "huge.ir"
    with open(path, "wb") as handle:
        handle.write(b"# " + b"x" * (3 << 20) + b"\ngraph g\n")  # one 3 MiB comment line: not sniffed whole
    assert not is_ir_text(str(path))
    path.write_bytes(b"\r\n# comment\r\ngraph g\r\n")
    assert is_ir_text(str(path))


def test_foreign_file_without_py_extension(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    result = run_cli("dump", "weights.bin", cwd=tmp_path)
    assert_clean_error(result, r"weights\.bin: not a model file", code=2)


def test_truncated_ir_model_file(tmp_path):
    (tmp_path / "model.ir").write_text("graph g\n  in_tree (*,)\n", encoding="utf-8")
    result = run_cli("dump", "model.ir", cwd=tmp_path)
    assert_clean_error(result, r"model\.ir: ParseError: line 2: the text ends before the `out_tree` line", code=2)


def test_spec_too_large_to_exist(tmp_path):
    path = write(tmp_path, "astronomical", specs_returning("(Spec((10**30,)),)"))
    result = run_cli("dump", path, cwd=tmp_path)
    line = assert_clean_error(result, r"(specs\(\)|tracing loss): ShapeError: shape \(10{30},\) has more than 2\*\*63-1 bytes", code=2)
    assert line.startswith(f"pullback: error: {path}"), line


def test_non_ascii_model_name_compiles(tmp_path):
    """The model name becomes the graph name and (sanitized) the native symbol."""
    pytest.importorskip("compiler.codegen")
    path = write(tmp_path, "modèle_日本", model(GOOD_LOSS))
    result = run_cli("compile", path, "-o", "out.pbk", cwd=tmp_path)
    assert_ok(result)
    result = run_cli("run", "out.pbk", "--calls", "2", cwd=tmp_path)
    assert "loss =" in assert_ok(result)


def test_model_importing_a_broken_helper_names_the_model(tmp_path):
    (tmp_path / "helper_mod.py").write_text("def make():\n    raise LookupError('no such layer')\n")
    source = model("import helper_mod\nhelper_mod.make()\n" + GOOD_LOSS)
    path = write(tmp_path, "uses_helper", source)
    result = run_cli("dump", path, cwd=tmp_path)
    assert_clean_error(result, r"uses_helper\.py:3: LookupError: no such layer", code=2)
