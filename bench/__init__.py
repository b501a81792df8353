"""Benchmarks and test-data generators for mailpipe (not shipped in the wheel)."""
