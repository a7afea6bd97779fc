"""The graph IR: types, graph, verifier, text printer and parser, DOT export."""
