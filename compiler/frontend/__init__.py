"""Front end: trace numpy-style Python functions into graphs."""
