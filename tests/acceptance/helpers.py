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


def simulator_process() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "simulate",
            "--port",
            str(port),
            "--duration",
            "1.5",
            "--concurrent-limit",
            "4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/clari/v4"
    deadline = time.monotonic() + 15
    while True:
        try:
            http_json(base + "/_sim/stats")
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield base
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
