"""Stopping child processes the same way everywhere: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess
from typing import Self


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    """Terminate `process` if it still runs, kill it after `timeout` seconds; its exit code (None if no process)."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ChildProcess:
    """A started-then-stopped helper process used as a context manager: `with X(...) as x:` starts it and
    releases it (`close()`: stop, then remove what it wrote) on leaving."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
