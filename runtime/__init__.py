"""pullback runtime: load compiled artifacts and call them with numpy arrays.

Depends on numpy and the standard library only (plus llvmlite's loader for native
code); never imports networkx or the compiler package.
"""
