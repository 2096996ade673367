"""Shared pieces: a simulator in its own pinned process, configs, RSS readings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tempfile

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "results" / "work"


def scratch() -> tempfile.TemporaryDirectory[str]:
    """A private directory for one scenario's ledger and results, on the repository's disk
    rather than the system temp directory (where the test suite makes and deletes thousands of
    files). On ext4 without a journal (this VM), creating a file skips every inode freed in the
    last few minutes in its block group, one by one: right after a run deleted 10,000 files,
    each new one cost 100-300 us of kernel CPU instead of ~8. So WORK is marked as a top of a
    directory hierarchy (chattr +T) where the file system allows it, and ext4 then places each
    scenario's directory in a block group of its own choosing (spread, like directories under
    /) instead of beside the last run's deleted files. Bench 1 still prints the disk's own rate
    measured in its directory, so what the disk did is visible either way."""
    import tempfile  # here: the daemon-side worker imports this module and counts its RSS

    WORK.mkdir(parents=True, exist_ok=True)
    _mark_top_directory(WORK)
    return tempfile.TemporaryDirectory(dir=WORK)


def _mark_top_directory(path: Path) -> None:
    """FS_TOPDIR_FL via FS_IOC_SETFLAGS (Linux ext2/3/4); a no-op where unsupported."""
    if sys.platform != "linux":
        return
    import fcntl
    import struct

    get_flags, set_flags, topdir = 0x80086601, 0x40086602, 0x00020000
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        (flags,) = struct.unpack("l", fcntl.ioctl(fd, get_flags, struct.pack("l", 0)))
        if not flags & topdir:
            fcntl.ioctl(fd, set_flags, struct.pack("l", flags | topdir))
    except OSError:
        pass
    finally:
        os.close(fd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(core: int) -> None:
    """Pin this process to one core when the machine has more than one."""
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {core})


def rss_peak_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_now_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read())


def wait_answering(url: str, within: float = 20.0) -> None:
    """Until a server started in a subprocess answers `url` (OSError after `within` seconds)."""
    deadline = time.monotonic() + within
    while True:
        try:
            http_json(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Simulator:
    """`orchestrator simulate` in a subprocess pinned to core 1."""

    def __init__(self, **config: Any) -> None:
        self.port = free_port()
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/clari/v4"

    def __enter__(self) -> Simulator:
        code = "import bench.common as c; c.pin(1); from orchestrator.cli import main; main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "simulate", "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_answering(self.base + "/_sim/stats")
        if self.config:
            http_json(self.base + "/_sim/config", self.config)
        return self

    def remote_jobs(self) -> list[dict[str, Any]]:
        return list(http_json(self.base + "/_sim/jobs"))

    def stats(self) -> dict[str, Any]:
        return dict(http_json(self.base + "/_sim/stats"))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def write_config(
    tmp: Path, base_url: str, *, output_dir: Path | None = None, **overrides: Any
) -> Path:
    daemon = {"claim_interval": "0.05s", "max_submits": 64, "max_fetches": 32, "retry_base": "0.1s"}
    daemon.update(overrides.pop("daemon", {}))
    provider = {
        "requests_per_second": 100000,
        "retries": 3,
        "limits_refresh": "600s",
        "poll": '{ initial = "0.05s", max_interval = "0.5s", min_interval = "0.01s" }',
    }
    provider.update(overrides.pop("provider", {}))

    def val(v: Any) -> str:
        if isinstance(v, str) and not v.startswith("{"):
            return f'"{v}"'
        return str(v)

    lines = [
        "[ledger]",
        f'url = "sqlite+aiosqlite:///{tmp}/ledger.db"',
        "[output]",
        f'dir = "{output_dir or tmp / "results"}"',
        "[daemon]",
        *(f"{k} = {val(v)}" for k, v in daemon.items()),
        "[providers.clari]",
        f'base_url = "{base_url}"',
        'api_key = "bench-key"',
        *(f"{k} = {val(v)}" for k, v in provider.items()),
        "[[pipelines]]",
        'name = "bench"',
        'kind = "clari.forecast_export"',
        'params = { forecastId = "fc", timePeriod = "2026_Q4", exportFormat = "CSV" }',
    ]
    path = tmp / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
