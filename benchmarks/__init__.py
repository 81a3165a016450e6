"""Benchmarks: scripts that print tables; nothing here is imported by the library."""
