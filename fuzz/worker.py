"""One libFuzzer process for one target: `python -m fuzz.worker TARGET [libFuzzer flags] [corpus dirs]`.

libFuzzer runs its own program again for -merge (and -fork); EPP_FUZZ_SELF names an executable that does
(`python -m fuzz.worker TARGET`), since this module is not one."""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports(include=["epp", "fuzz"]):
    from fuzz.targets import TARGETS


def main() -> None:
    name = sys.argv[1]
    target = TARGETS[name]
    atheris.Setup([os.environ.get("EPP_FUZZ_SELF", sys.argv[0]), *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
