"""Helpers for acceptance tests: the CLI as a subprocess, a simulator in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import free_port


def cli(*args: str, check: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        **kw,  # type: ignore[call-overload]
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def http_json(url: str, body: dict[str, object] | None = None) -> object:
    req = urllib.request.Request(  # noqa: S310 (loopback simulator)
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        return json.loads(resp.read())


def simulator_process(
    duration: float = 1.5, concurrent_limit: int = 4, path: str = "/clari/v4"
) -> Iterator[str]:
    """Every simulator in a process of its own (it outlives the daemons a test kills): yields
    the base URL plus `path`, and stops it after."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "orchestrator", "simulate", "--port", str(port)),
            *("--duration", str(duration), "--concurrent-limit", str(concurrent_limit)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            http_json(root + "/clari/v4/_sim/stats")
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield root + path
    proc.terminate()
    proc.wait(10)


def jobs_json(config: Path) -> list[dict[str, object]]:
    out = cli("jobs", "list", "--json", "--config", str(config), check=True)
    return list(json.loads(out.stdout))


def start_daemon(config: Path, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """`orchestrator run --config F [args]` as a subprocess, output discarded unless asked."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "--config", str(config), *args], **popen
    )


def wait_until(
    condition: Callable[[], bool], daemon: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    """Poll `condition` while the daemon lives; fail if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert daemon.poll() is None, "the daemon exited early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
