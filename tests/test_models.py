"""compiler.models: loading model files, the convention's checks and their messages."""
from __future__ import annotations

import re
import sys
import textwrap

import numpy as np
import pytest

import compiler
from compiler.models import Model, ModelError, is_ir_text, load_model, random_like, summary
from tests.examples.support import example_path

GOOD = """
import numpy as np
from compiler import Spec, ops

def loss(params, x, y):
    return ops.mean(ops.square(x * params["w"] + params["b"] - y))

def specs():
    return {"w": Spec((4,)), "b": Spec(())}, Spec((3, 4)), Spec((3, 4))
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_loads_a_model_file(tmp_path):
    model = load_model(write(tmp_path, "linear.py", GOOD))
    assert isinstance(model, Model)
    assert model.name == "linear" and not model.is_ir
    assert model.init_params is None and model.make_batch is None
    graph = model.trace()
    assert graph.name == "linear"
    names = {graph.node(i).attrs["name"]: graph.node(i).attrs["kind"] for i in graph.inputs}
    assert names == {"params.b": "param", "params.w": "param", "x": "data", "y": "data"}


def test_loading_leaves_sys_modules_and_sys_path_alone(tmp_path):
    before_modules, before_path = set(sys.modules), list(sys.path)
    load_model(write(tmp_path, "linear.py", GOOD)).trace()
    assert {m for m in set(sys.modules) - before_modules if "linear" in m or "_pullback_model" in m} == set()
    assert sys.path == before_path


def test_same_file_name_in_two_directories_stays_apart(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = load_model(write(tmp_path, "a/model.py", GOOD))
    two = load_model(write(tmp_path, "b/model.py", GOOD.replace("(4,)", "(1,)")))
    assert one.module is not two.module
    assert one.spec_trees()[0]["w"].shape == (4,) and two.spec_trees()[0]["w"].shape == (1,)


def test_a_model_can_import_a_helper_next_to_it(tmp_path):
    write(tmp_path, "helpers_for_model.py", "SIZE = 5\n")
    model = load_model(write(tmp_path, "uses_helper.py", GOOD.replace(
        "import numpy as np", "import numpy as np\nfrom helpers_for_model import SIZE").replace("(4,)", "(SIZE,)")
        .replace("(3, 4)", "(3, SIZE)")))
    assert model.spec_trees()[0]["w"].shape == (5,)
    sys.modules.pop("helpers_for_model", None)


def test_example_args_from_init_params_and_make_batch():
    model = load_model(example_path("mlp"))
    params, x, labels = model.example_args(seed=3)
    np.testing.assert_array_equal(params["W1"], model.init_params(3)["W1"])
    assert x.dtype == np.float32 and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10


def test_example_args_from_specs_when_the_optional_functions_are_missing(tmp_path):
    model = load_model(write(tmp_path, "linear.py", GOOD))
    params, x, y = model.example_args(seed=0)
    assert params["w"].shape == (4,) and params["w"].dtype == np.float32
    assert x.shape == (3, 4)
    again = model.example_args(seed=0)
    np.testing.assert_array_equal(again[1], x)
    assert np.isfinite(compiler.evaluate(model.trace(), params, x, y))


def test_example_arrays_in_specs_are_used_as_given(tmp_path):
    model = load_model(write(tmp_path, "arrays.py", """
        import numpy as np
        from compiler import ops
        def loss(params, x):
            return ops.exp(params * x)
        def specs():
            return np.float32(0.5), np.arange(1, dtype=np.float32).reshape(())
    """))
    params, x = model.example_args()
    assert float(x) == 0.0
    assert model.trace().type(model.trace().outputs[0]).shape == ()


def test_make_batch_may_return_a_lone_data_argument(tmp_path):
    model = load_model(write(tmp_path, "lone.py", """
        import numpy as np
        from compiler import Spec, ops
        def loss(params, x):
            return ops.sum(params * x)
        def specs():
            return Spec((2,)), Spec((2,))
        def make_batch(seed):
            return np.ones(2, np.float32)
    """))
    params, x = model.example_args()
    np.testing.assert_array_equal(x, np.ones(2))


def test_random_like_types():
    rng = np.random.default_rng(0)
    tree = random_like({"f": compiler.Spec((2, 3)), "i": compiler.Spec((4,), "int64"), "b": compiler.Spec((), "bool")}, rng)
    assert tree["f"].dtype == np.float32 and tree["f"].shape == (2, 3)
    assert tree["i"].dtype == np.int64 and tree["b"].dtype == np.bool_


@pytest.mark.parametrize("source, fragment", [
    ("def specs():\n    return (None,)\n", "must define loss()"),
    ("def loss(p):\n    return p\n", "must define specs()"),
    ("x = 1\n", "must define loss() and specs()"),
    ("loss = 3\nspecs = 4\n", "must define loss() and specs()"),
    (GOOD + "\ninit_params = 7\n", "init_params must be a function"),
])
def test_convention_violations(tmp_path, source, fragment):
    path = write(tmp_path, "bad.py", source)
    with pytest.raises(ModelError, match=re.escape(fragment)) as info:
        load_model(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("source, expected", [
    ("import numpy\nundefined_name + 1\n", ":2: NameError: name 'undefined_name' is not defined"),
    ("def loss(:\n", ": SyntaxError: invalid syntax (line 1)"),
    ("import no_such_module_pullback\n", ":1: ModuleNotFoundError: No module named 'no_such_module_pullback'"),
    ("raise SystemExit(3)\n", ":1: SystemExit: 3"),
])
def test_import_failures_are_one_line_with_the_line_number(tmp_path, source, expected):
    path = write(tmp_path, "bad.py", source)
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message == f"{path}{expected}" or message.startswith(f"{path}{expected}"), message
    assert "\n" not in message


def test_trace_failures_name_the_line(tmp_path):
    path = write(tmp_path, "bad.py", GOOD.replace('params["b"] - y', 'params["b"] - y[0, 0, 0]'))
    with pytest.raises(ModelError) as info:
        load_model(path).trace()
    assert str(info.value).startswith(f"{path}:6: tracing loss: ")


def test_data_dependent_control_flow_is_reported(tmp_path):
    path = write(tmp_path, "branchy.py", """
        from compiler import Spec
        def loss(params):
            if params > 0:
                return params
            return -params
        def specs():
            return (Spec(()),)
    """)
    with pytest.raises(ModelError, match=r"branchy.py:4: tracing loss: TraceError: a traced tensor has no concrete value"):
        load_model(path).trace()


@pytest.mark.parametrize("body, fragment", [
    ("return params * 2.0", "loss must return a float scalar, got f32[3]"),
    ("return (params.sum(), params.sum())", "loss must return one scalar tensor"),
])
def test_loss_must_be_one_float_scalar(tmp_path, body, fragment):
    path = write(tmp_path, "vector.py", f"""
        from compiler import Spec
        def loss(params):
            {body}
        def specs():
            return (Spec((3,)),)
    """)
    with pytest.raises(ModelError, match=re.escape(fragment)):
        load_model(path).trace()


@pytest.mark.parametrize("returned, fragment", [
    ('{"w": Spec((2,))}', "specs() must return a non-empty tuple"),
    ("()", "specs() must return a non-empty tuple"),
    ("1 / 0", "specs(): ZeroDivisionError: division by zero"),
])
def test_bad_specs(tmp_path, returned, fragment):
    path = write(tmp_path, "specs.py", f"""
        from compiler import Spec
        def loss(params):
            return params["w"].sum()
        def specs():
            return {returned}
    """)
    with pytest.raises(ModelError, match=re.escape(fragment)):
        load_model(path).trace()


def test_wrong_number_of_specs(tmp_path):
    path = write(tmp_path, "arity.py", GOOD.replace("Spec((3, 4)), Spec((3, 4))", "Spec((3, 4))"))
    with pytest.raises(ModelError, match=re.escape("arity.py: specs() returns 2 spec tree(s) but loss(params, x, y) does not take 2")):
        load_model(path).trace()


def test_missing_file_directory_and_foreign_files(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "nope.py")
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="not a model file"):
        load_model(write(tmp_path, "notes.txt", "hello\n"))


def test_ir_text_detection(tmp_path):
    assert is_ir_text(write(tmp_path, "a.ir", "# a comment\n\ngraph loss(%x: f32[]) {\n"))
    assert not is_ir_text(write(tmp_path, "b.py", "# graph comment\nimport numpy\n"))
    assert not is_ir_text(write(tmp_path, "c.py", "graphs = 1\n"))
    binary = tmp_path / "d.bin"
    binary.write_bytes(b"\xff\xfe\x00graph ")
    assert not is_ir_text(binary)


def test_summary_counts_ops_and_inputs(tmp_path):
    graph = load_model(write(tmp_path, "linear.py", GOOD)).trace()
    text = summary(graph)
    assert text.startswith("linear: forward IR has ")
    assert "2 param inputs (5 values) and 2 data inputs" in text
    assert "mean 1" in text
