"""Benchmarks: measured by hand or with `make bench`, never asserted in tests."""
