"""The `pullback` command: dump a model's IR at any stage, compile it, run an artifact.

Exit codes: 0 success; 1 a runtime failure (the kernel failed, or an internal error);
2 bad input (a model file, an argument, a missing or corrupt file); 3 the requested
stage is not available in this build yet.

Only the standard library is imported at module level, and `pullback run` uses the
runtime package alone, so running an artifact does not pay for the compiler.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from typing import Any, Callable, Sequence

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

STAGES = ("forward", "backward", "optimized", "saved", "llvm", "asm")
_GRAPH_STAGES = ("forward", "backward", "optimized")
_EXTENSIONS = {"saved": "txt", "llvm": "ll", "asm": "s"}


class CLIError(Exception):
    """Reported as one line on stderr: `pullback: error: <message>`, then exit `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Unavailable(CLIError):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"stage {stage!r} is not available: {reason}", EXIT_UNAVAILABLE)


# ------------------------------------------------------------------- parser
_MAIN_EPILOG = """\
examples:
  pullback dump examples/mlp.py                       forward IR of a model file
  pullback dump examples/mlp.py --stage backward      value-and-gradient IR
  pullback compile examples/mlp.py -o mlp.pbk         build the training-step artifact
  pullback run mlp.pbk --calls 100                    time it on random inputs

A MODEL is a Python file defining loss(params, *data) and specs() (see README.md,
"Model files"), or an IR text file as printed by `pullback dump`.

exit codes: 0 ok, 1 runtime failure, 2 bad input, 3 stage not available yet
"""

_DUMP_EPILOG = """\
stages (each builds on the one before):
  forward    the traced loss, as IR
  backward   value_and_grad of the loss with respect to the params (argument 0), as IR
  optimized  the backward IR after the graph optimization passes (--opt-level; 3 = 2 here)
  saved      the activations the backward pass keeps, with sizes and source lines
  llvm       LLVM IR of the compiled training step
  asm        native assembly of the compiled training step

examples:
  pullback dump examples/mlp.py
  pullback dump examples/mlp.py --stage backward --format dot | dot -Tsvg > mlp.svg
  pullback dump examples/rnn.py --stage asm --opt-level 3
  pullback dump examples/lstm.py --stage llvm --dump-dir out/   writes out/01_forward.ir ... out/05_llvm.ll,
                                                      plus out/03_passes/ (the IR after each pass)
"""

_COMPILE_EPILOG = """\
The artifact holds native code for one training step: given (params, *data) it returns
(loss, gradients with respect to params). Load it with runtime.load(path) or `pullback run`.

examples:
  pullback compile examples/mlp.py -o mlp.pbk
  pullback compile examples/lstm.py -o lstm.pbk --opt-level 3
"""

_RUN_EPILOG = """\
Inputs are random, shaped and typed as the artifact's manifest says: floats are
normal(0, 1), integers uniform in [0, 10), bools fair coins. One untimed warm-up call
precedes the timed calls.

examples:
  pullback run mlp.pbk
  pullback run mlp.pbk --calls 1000 --seed 1
"""


def _opt_level(text: str) -> int:
    try:
        level = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 0, 1, 2 or 3, got {text!r}") from None
    if not 0 <= level <= 3:
        raise argparse.ArgumentTypeError(f"must be 0, 1, 2 or 3, got {level}")
    return level


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise CLIError(message)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="show the full Python traceback on errors (for debugging pullback)")

    parser = _Parser(
        prog="pullback", formatter_class=raw, parents=[common], epilog=_MAIN_EPILOG,
        description="pullback: an ahead-of-time compiler for backward passes.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    dump = sub.add_parser(
        "dump", parents=[common], formatter_class=raw, epilog=_DUMP_EPILOG,
        help="print a model's IR (or LLVM IR, assembly) at one stage",
        description="Print a model at one stage of the pipeline.",
    )
    dump.add_argument("model", metavar="MODEL", help="model file (.py) or IR text file")
    dump.add_argument("--stage", choices=STAGES, default="forward", help="what to print (default: forward)")
    dump.add_argument("--format", choices=("text", "dot"), default="text",
                      help="text (the IR) or dot (Graphviz) for graph stages (default: text)")
    dump.add_argument("--opt-level", type=_opt_level, default=2, metavar="N", help="0-3 (default: 2)")
    dump.add_argument("--dump-dir", metavar="DIR",
                      help="instead of printing, write every stage up to --stage into DIR, one numbered file each")
    dump.set_defaults(handler=cmd_dump)

    comp = sub.add_parser(
        "compile", parents=[common], formatter_class=raw, epilog=_COMPILE_EPILOG,
        help="compile a model's training step into an artifact",
        description="Compile value-and-gradient of a model's loss into a native artifact.",
    )
    comp.add_argument("model", metavar="MODEL", help="model file (.py) or IR text file")
    comp.add_argument("-o", "--output", required=True, metavar="OUT", help="artifact path to write")
    comp.add_argument("--opt-level", type=_opt_level, default=2, metavar="N", help="0-3 (default: 2)")
    comp.add_argument("--dump-dir", metavar="DIR",
                      help="write the IR after every graph pass (numbered .txt/.dot) and the LLVM IR into DIR")
    comp.set_defaults(handler=cmd_compile)

    run = sub.add_parser(
        "run", parents=[common], formatter_class=raw, epilog=_RUN_EPILOG,
        help="call a compiled artifact on random inputs and time it",
        description="Load an artifact, call it on random inputs, print the loss and call times.",
    )
    run.add_argument("artifact", metavar="ARTIFACT", help="a file written by `pullback compile`")
    run.add_argument("--calls", type=_positive, default=20, metavar="N", help="timed calls (default: 20)")
    run.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random inputs (default: 0)")
    run.set_defaults(handler=cmd_run)

    prof = sub.add_parser(
        "profile", parents=[common], formatter_class=raw,
        help="compile a model's training step with cycle counters and print where its time goes",
        description="Compile MODEL's value-and-gradient kernel instrumented (a cycle counter around every "
                    "kernel call), call it on random inputs, print the time per step, per kernel function "
                    "and per op (medians over 5 rounds).",
    )
    prof.add_argument("model", metavar="MODEL", help="model file (.py) or IR text file")
    prof.add_argument("--opt-level", type=_opt_level, default=2, metavar="N", help="0-3 (default: 2)")
    prof.add_argument("--calls", type=_positive, default=50, metavar="N", help="calls per round (default: 50)")
    prof.add_argument("--top", type=_positive, default=15, metavar="K", help="rows per table (default: 15)")
    prof.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random inputs (default: 0)")
    prof.set_defaults(handler=cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            from importlib.metadata import PackageNotFoundError, version

            try:
                print(f"pullback {version('pullback')}")
            except PackageNotFoundError:
                print("pullback (not installed)")
            return EXIT_OK
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return args.handler(args)
    except CLIError as exc:
        if show_traceback:
            raise
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pullback dump ... | head`
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug in pullback: still one line unless asked
        if show_traceback:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _error(f"internal error: {type(exc).__name__}: {message} (rerun with --traceback for details)")
        return EXIT_FAILURE


def _error(message: str) -> None:
    print(f"pullback: error: {message}", file=sys.stderr)


# --------------------------------------------------------- compiler helpers
def _load_forward(path: str) -> Any:
    from compiler.errors import PullbackError
    from compiler.models import load_model

    try:
        return load_model(path).trace()
    except NotImplementedError as exc:  # an IR file before the parser exists
        raise Unavailable("forward", f"reading IR text needs compiler.parse, which is not written yet ({exc})") from exc
    except PullbackError as exc:
        message = str(exc)
        raise CLIError(message if message.startswith(path) else f"{path}: {type(exc).__name__}: {message}") from exc


def _stage_call(stage: str, path: str, fn: Callable[[], Any]) -> Any:
    """Run one pipeline step; missing pieces become Unavailable, bad input CLIError."""
    from compiler.errors import PullbackError

    try:
        return fn()
    except NotImplementedError as exc:
        raise Unavailable(stage, str(exc) or "not implemented yet") from exc
    except PullbackError as exc:
        raise CLIError(f"{path}: {stage}: {type(exc).__name__}: {exc}") from exc


def _codegen(stage: str, attr: str) -> Callable:
    try:
        import compiler.codegen as codegen
    except ModuleNotFoundError as exc:
        if exc.name != "compiler.codegen":
            raise
        raise Unavailable(stage, "the code generator (compiler.codegen) is not written yet") from None
    fn = getattr(codegen, attr, None)
    if fn is None:
        raise Unavailable(stage, f"compiler.codegen.{attr} is not written yet")
    return fn


def _value_and_grad(stage: str) -> Callable:
    import compiler

    fn = getattr(compiler, "value_and_grad", None)
    if fn is None:
        raise Unavailable(stage, "autodiff (compiler.value_and_grad) is not written yet")
    return fn


class _Pipeline:
    """The stages of one model, each computed once, on demand."""

    def __init__(self, path: str, opt_level: int) -> None:
        self.path = path
        self.opt_level = opt_level
        self._cache: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.pass_dump_dir: str | None = None  # where the pass manager writes the IR after each pass
        self.pass_report = ""

    def get(self, stage: str) -> Any:
        if stage not in self._cache:
            start = time.perf_counter()
            self._cache[stage] = getattr(self, "_" + stage)()
            self.timings[stage] = time.perf_counter() - start
        return self._cache[stage]

    def _forward(self) -> Any:
        return _load_forward(self.path)

    def _backward(self) -> Any:
        value_and_grad = _value_and_grad("backward")
        forward = self.get("forward")
        return _stage_call("backward", self.path, lambda: value_and_grad(forward, argnums=0))

    def _optimized(self) -> Any:
        try:
            from compiler.pipeline import PIPELINES, pass_manager
        except ModuleNotFoundError as exc:
            if exc.name != "compiler.pipeline":
                raise
            raise Unavailable("optimized", "the optimization pipeline (compiler.pipeline) is not written yet") from None
        step = self.get("backward")
        level = min(self.opt_level, max(PIPELINES))  # levels above the graph pipeline's only change codegen

        def run(dump_dir: str | None) -> Any:
            manager = pass_manager(level, dump_dir=dump_dir)
            graph = manager.run(step.copy())
            self.pass_report = manager.report()
            return graph

        if self.pass_dump_dir is None:
            return _stage_call("optimized", self.path, lambda: run(None))
        try:
            return _stage_call("optimized", self.path, lambda: run(self.pass_dump_dir))
        except Unavailable as exc:  # per-pass dumps need DOT export; the stage itself does not
            print(f"pullback: note: per-pass dumps skipped ({exc})", file=sys.stderr)
            return _stage_call("optimized", self.path, lambda: run(None))

    def _saved(self) -> str:
        import importlib
        import importlib.util

        if importlib.util.find_spec("compiler.autodiff.saved") is None:
            raise Unavailable("saved", "the saved-activations analysis (compiler.autodiff.saved) is not written yet")
        saved = importlib.import_module("compiler.autodiff.saved")
        report = getattr(saved, "saved_report", None)
        if report is None:
            raise Unavailable("saved", "compiler.autodiff.saved.saved_report is not written yet")
        # The analysis matches forward and joint graphs by node id: it needs the backward
        # graph as value_and_grad returned it, before any pass renumbers it.
        forward, step = self.get("forward"), self.get("backward")
        return _stage_call("saved", self.path, lambda: report(step, forward))

    def _llvm(self) -> str:
        llvm_ir = _codegen("llvm", "llvm_ir")
        step = self.get("backward")
        return _stage_call("llvm", self.path, lambda: llvm_ir(step, self.opt_level))

    def _asm(self) -> str:
        assembly = _codegen("asm", "assembly")
        step = self.get("backward")
        return _stage_call("asm", self.path, lambda: assembly(step, self.opt_level))

    def render(self, stage: str, fmt: str) -> str:
        value = self.get(stage)
        if stage not in _GRAPH_STAGES:
            return value if isinstance(value, str) else str(value)
        if fmt == "dot":
            from compiler.ir.dot import to_dot

            return _stage_call(stage, self.path, _unavailable_as("DOT export", lambda: to_dot(value)))
        from compiler.ir.printer import dump

        return _stage_call(stage, self.path, _unavailable_as("the IR printer", lambda: dump(value)))


def _unavailable_as(what: str, fn: Callable[[], str]) -> Callable[[], str]:
    def call() -> str:
        try:
            return fn()
        except NotImplementedError as exc:
            raise NotImplementedError(f"{what} is not written yet ({exc})") from None

    return call


def _check_model_path(path: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file")


# ----------------------------------------------------------------- commands
def cmd_dump(args: argparse.Namespace) -> int:
    if args.format == "dot" and args.stage not in _GRAPH_STAGES:
        raise CLIError(f"--format dot applies to the graph stages ({', '.join(_GRAPH_STAGES)}), not {args.stage!r}")
    _check_model_path(args.model)
    pipeline = _Pipeline(args.model, args.opt_level)
    if args.dump_dir is None:
        text = pipeline.render(args.stage, args.format)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return EXIT_OK
    try:
        os.makedirs(args.dump_dir, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"{args.dump_dir}: cannot create directory: {exc.strerror}") from None
    stages = STAGES[: STAGES.index(args.stage) + 1]
    if "optimized" in stages:
        pipeline.pass_dump_dir = os.path.join(args.dump_dir, f"{STAGES.index('optimized') + 1:02d}_passes")
    for number, stage in enumerate(stages, start=1):
        fmt = args.format if stage in _GRAPH_STAGES else "text"
        text = pipeline.render(stage, fmt)
        ext = "dot" if fmt == "dot" else _EXTENSIONS.get(stage, "ir")
        out = os.path.join(args.dump_dir, f"{number:02d}_{stage}.{ext}")
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
        print(f"wrote {out}")
        if stage == "optimized":
            report = os.path.join(args.dump_dir, f"{number:02d}_passes.txt")
            with open(report, "w", encoding="utf-8") as handle:
                handle.write(pipeline.pass_report + "\n")
            print(f"wrote {report} (pass timings) and {pipeline.pass_dump_dir}{os.sep} (the IR after each pass)")
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    _check_model_path(args.model)
    pipeline = _Pipeline(args.model, args.opt_level)
    step = pipeline.get("backward")
    compile_fn = _codegen("compile", "compile")
    start = time.perf_counter()
    options = {"opt_level": args.opt_level}
    if args.dump_dir is not None:
        options["dump_dir"] = args.dump_dir
    kernel = _stage_call("compile", args.model, lambda: compile_fn(step, **options))
    codegen_seconds = time.perf_counter() - start
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"{args.output}: directory {out_dir} does not exist")
    try:
        kernel.save(args.output)
    except OSError as exc:
        raise CLIError(f"{args.output}: cannot write: {exc.strerror or exc}") from None
    with open(args.output, "rb") as handle:
        data = handle.read()
    total = pipeline.timings.get("forward", 0.0) + pipeline.timings.get("backward", 0.0) + codegen_seconds
    print(
        f"wrote {args.output}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}\n"
        f"compiled in {total:.2f} s (trace {pipeline.timings.get('forward', 0.0):.2f} s, "
        f"autodiff {pipeline.timings.get('backward', 0.0) - pipeline.timings.get('forward', 0.0):.2f} s, "
        f"codegen -O{args.opt_level} {codegen_seconds:.2f} s)"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    # The runtime only: no compiler, no networkx.
    import numpy as np

    import runtime
    from runtime.pytree import flatten

    load = getattr(runtime, "load", None)
    if load is None:
        raise CLIError("running artifacts is not available: runtime.load is not written yet", EXIT_UNAVAILABLE)
    if not os.path.exists(args.artifact):
        raise CLIError(f"{args.artifact}: no such file")
    if os.path.isdir(args.artifact):
        raise CLIError(f"{args.artifact}: is a directory, expected an artifact file")
    try:
        kernel = load(args.artifact)
    except Exception as exc:  # noqa: BLE001 - ArtifactError and OSError: a bad file is bad input
        raise CLIError(_one_line(exc, args.artifact)) from exc

    manifest = getattr(kernel, "manifest", {}) or {}
    call_args = _random_call_args(manifest, args.seed)
    try:
        result = kernel(*call_args)  # warm-up: page in code, fill caches
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            result = kernel(*call_args)
            times.append(time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - CallError, KernelError: a runtime failure
        raise CLIError(_one_line(exc, args.artifact), EXIT_FAILURE) from exc

    leaves, _ = flatten(result)
    name = manifest.get("name") or os.path.basename(args.artifact)
    if leaves:
        loss = np.asarray(leaves[0])
        shown = f"{float(loss):.6g}" if loss.size == 1 else f"array of shape {loss.shape}"
        print(f"{name}: loss = {shown} ({len(leaves)} outputs, inputs seeded with {args.seed})")
    p10, p50, p90 = (_duration(float(v)) for v in np.percentile(times, [10, 50, 90]))
    print(f"{args.calls} calls: median {p50} (p10 {p10}, p90 {p90})")
    return EXIT_OK


def _random_call_args(manifest: dict, seed: int) -> list:
    """Random arguments for a kernel with this manifest, in its input pytree."""
    import numpy as np

    from runtime.pytree import treedef_from_text, unflatten

    rng = np.random.default_rng(seed)
    arrays = [_random_input(rng, entry) for entry in manifest.get("inputs", [])]
    if "in_tree" not in manifest:
        return arrays
    tree = unflatten(treedef_from_text(manifest["in_tree"]), arrays)
    return list(tree) if isinstance(tree, tuple) else [tree]


def cmd_profile(args: argparse.Namespace) -> int:
    _check_model_path(args.model)
    step = _Pipeline(args.model, args.opt_level).get("backward")
    compile_fn = _codegen("compile", "compile")
    kernel = _stage_call("compile", args.model, lambda: compile_fn(step, opt_level=args.opt_level, profile=True))
    from compiler.codegen import profiling

    call_args = _random_call_args(kernel.manifest, args.seed)
    try:
        profile = profiling.measure(kernel, lambda: kernel(*call_args), calls=args.calls, rounds=5)
    except Exception as exc:  # noqa: BLE001 - CallError, KernelError: a runtime failure
        raise CLIError(_one_line(exc, args.model), EXIT_FAILURE) from exc
    print(profiling.report(profile, top=args.top))
    return EXIT_OK


def _duration(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _random_input(rng: Any, entry: dict) -> Any:
    import numpy as np

    shape, dtype = tuple(entry["shape"]), entry["dtype"]
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype.startswith("int"):
        return rng.integers(0, 10, shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(np.bool_)


def _one_line(exc: BaseException, path: str) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        message = exc.strerror
    return message if message.startswith(path) else f"{path}: {type(exc).__name__}: {message}"


if __name__ == "__main__":
    sys.exit(main())
