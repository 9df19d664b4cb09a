"""Coverage-guided fuzzing (atheris) of epp's parsers of untrusted input; see `python -m fuzz --help`."""
