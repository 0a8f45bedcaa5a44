"""Micro-benchmarks (pytest-benchmark) of what juggler does in-process.

``python -m bench`` runs them (see bench/micro/run.py) and puts their
medians in the report; ``make microbench`` runs them alone with
pytest-benchmark's own table. They are not part of ``make test`` (its
pytest collects ``tests/`` only); tests/bench runs each once, untimed, so
that a change in the code they call is caught there.
"""
