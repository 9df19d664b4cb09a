"""`epp config check FILE`: print the effective configuration after defaulting, or the errors."""

from __future__ import annotations

import sys

import yaml

from epp.config.schema import ConfigError, load_config_file


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: epp config check FILE", file=sys.stderr)
        return 2
    try:
        config = load_config_file(argv[0])
    except ConfigError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(config.describe(), sort_keys=False), end="")
    return 0
