"""systemd's notify protocol (sd_notify(3)), with no dependency: datagrams to $NOTIFY_SOCKET.

A no-op when the daemon is not started by systemd (no NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # "@name" is an abstract socket: a leading NUL byte on Linux.
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None or self.address is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd gone or the socket full: never let notification break the daemon

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec (from $WATCHDOG_USEC), when systemd asks for keep-alives."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1e6 / 2
        except ValueError:
            return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
