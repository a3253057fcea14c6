"""Benchmarks of Upmetr Audit against the systems a user would pick instead (issue 8).

Run them with ``python -m bench`` (see :mod:`bench.harness`).
"""
