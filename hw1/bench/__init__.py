"""Throughput benchmark, ``python -m hw1.bench`` (its flags and parts: :mod:`hw1.bench.cli`).

The package: :mod:`~hw1.bench.timing` times calls and counts FLOPs, :mod:`~hw1.bench.models` measures
each model in each configuration, :mod:`~hw1.bench.data` the P1 data loader, :mod:`~hw1.bench.reference`
torchvision's DenseNet fed by per-access PNG decoding; :mod:`~hw1.bench.cli` parses the flags, runs the
parts and writes the JSON record and the table.
"""
