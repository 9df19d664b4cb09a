"""Helpers shared by tests (and benchmarks) of several layers; no test lives here."""
