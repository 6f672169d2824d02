"""Benchmarks for itsmflow (``python -m bench <suite>``): measured, never asserted in tests."""
