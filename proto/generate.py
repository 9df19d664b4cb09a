"""Compile proto/epp_pb/**/*.proto into the importable package epp_pb/ at the repository root.

The generated modules are committed so that a fresh clone needs no generate step;
tests/unit/test_proto_generated.py fails when they are out of date with the .proto files.
Run: python proto/generate.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PACKAGE = "epp_pb"


def _compile(out_dir: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    for directory in [out_dir / PACKAGE, *(p for p in (out_dir / PACKAGE).rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (out_dir / PACKAGE / "py.typed").touch()


#: lines that name the generator's or runtime's version: a machine that resolves another patch release of
#: grpcio-tools writes them differently while the code is the same, so the check ignores them
_VERSION_LINE = re.compile(rb"^(GRPC_GENERATED_VERSION = .*|# Protobuf Python Version: .*|    \d+,)$", re.M)


def _same(a: Path, b: Path) -> bool:
    if filecmp.cmp(a, b, shallow=False):
        return True
    return _VERSION_LINE.sub(b"", a.read_bytes()) == _VERSION_LINE.sub(b"", b.read_bytes())


def _differences(a: Path, b: Path) -> list[str]:
    names_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    names_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    diff = sorted(str(n) for n in names_a ^ names_b)
    diff += sorted(str(n) for n in names_a & names_b if not _same(a / n, b / n))
    return diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if epp_pb/ is not up to date")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _compile(out)
        target = REPO_ROOT / PACKAGE
        if args.check:
            diff = _differences(out / PACKAGE, target) if target.exists() else ["epp_pb/ missing"]
            if diff:
                print("epp_pb/ is stale; run: python proto/generate.py", *diff, sep="\n  ", file=sys.stderr)
                return 1
            return 0
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(out / PACKAGE, target)
    print(f"generated {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
