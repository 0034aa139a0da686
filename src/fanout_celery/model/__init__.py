"""Definitions and records: what functions, events, runs, steps, settings and options
are, validated, with no I/O. Every other layer builds on these."""
