"""Exceptions raised by the runtime. Every message names the artifact or kernel and the problem."""


class ArtifactError(Exception):
    """An artifact (file or in-memory parts) cannot be read, trusted or loaded on this host.

    Raised before any native code from the artifact is loaded: bad magic, unknown format
    version, truncation, hash mismatch, malformed manifest, incompatible CPU, or object
    code that does not define or cannot resolve the symbols it needs.
    """


class CallError(ValueError):
    """The arguments of a kernel call do not match its manifest.

    One class for every call-time mismatch (argument count, pytree structure, shape,
    dtype, unconvertible value) so callers catch one thing. It subclasses ValueError,
    as runtime.pytree.TreeError does: the values are wrong for this kernel.
    """


class KernelError(RuntimeError):
    """The native code ran and reported failure (a non-zero return code)."""
