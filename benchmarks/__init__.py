"""Benchmarks: scripts that print measured figures (`python -m benchmarks` runs them all; docs/benchmarks.md)."""
