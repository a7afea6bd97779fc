"""Benchmarks: pullback's compiled training steps against hand-written numpy, JAX and PyTorch.

    python -m bench.run [--quick] [--json out.json] [--workloads mlp,rnn,...]

workloads.py    the models (one definition for pullback, JAX and PyTorch) and a hand-written
                vectorized numpy forward+backward for each
contenders.py   setting up each contender on a workload, and the gradient check
harness.py      round-robin timing, statistics, machine description and peak sgemm rate
report.py       the printed tables and the JSON form
run.py          the command: one child process per workload
"""
