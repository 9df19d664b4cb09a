"""epp lifts the soft limit of open files to the hard one at startup (as the reference's Go runtime does)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

LOW = 256

PROBE = """
import resource
from epp.servers import raise_open_files_limit
before = resource.getrlimit(resource.RLIMIT_NOFILE)
print(before[0], raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def run_with_soft_limit(soft: int) -> list[int]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run(
        [sys.executable, "-c", PROBE], preexec_fn=lower, capture_output=True, text=True, timeout=60, check=True
    )
    return [int(word) for word in done.stdout.split()]


def test_a_low_soft_limit_is_raised_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    before, returned, soft_after, hard_after = run_with_soft_limit(LOW)
    assert before == LOW
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert returned == soft_after == expected
    assert hard_after == hard


def test_a_soft_limit_already_at_the_hard_one_is_left() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the hard limit of open files is unlimited here; a soft limit cannot be set equal to it")
    before, returned, soft_after, _ = run_with_soft_limit(hard)
    assert before == returned == soft_after == hard
