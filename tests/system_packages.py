"""System programs the tests need (Prometheus, Chromium), installed from their Debian package when missing.

As root (or with password-less sudo) the package is installed, so a fresh CI machine runs every test; a user
who cannot install it gets PackageNotInstallable, whose message names the command to run, and the tests that
need it are skipped with that message (never silently). A failed install is PackageMissing: a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


class PackageMissing(RuntimeError):
    pass


class PackageNotInstallable(PackageMissing):
    """This user cannot install the package: the tests that need it are skipped, saying how to install it."""


def install_command(package: str) -> str:
    return f"apt-get update && apt-get install -y --no-install-recommends {package}  (as root)"


def ensure_debian_package(package: str, binaries: Sequence[str], without_apt: str, timeout: float = 900.0) -> list[str]:
    """Paths of `binaries` (the first name found on PATH of each alternative "a|b"), installing `package` if
    one is missing; `without_apt` says what to do on a machine without apt-get."""

    def find() -> list[str | None]:
        return [next((p for name in names.split("|") if (p := shutil.which(name))), None) for names in binaries]

    found = find()
    if all(found):
        return [p for p in found if p]
    missing = ", ".join(names.split("|")[0] for names, path in zip(binaries, found, strict=True) if not path)
    if not shutil.which("apt-get"):
        raise PackageNotInstallable(f"{missing} not installed and there is no apt-get to install it; {without_apt}")
    sudo: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo") or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
            raise PackageNotInstallable(
                f"{missing} not installed and this user cannot install it; run: {install_command(package)}"
            )
        sudo = ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [*sudo, "apt-get", "update", "-qq"],
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise PackageMissing(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    found = find()
    if not all(found):
        raise PackageMissing(f"the {package} package installed no {missing}")
    return [p for p in found if p]
