"""What `orchestrator replicas`, the status page and /metrics say about the daemons sharing the
ledger: each replica (id, host, pid, started, last heartbeat, state) and the leases it holds."""

from __future__ import annotations

from typing import Any

from orchestrator.leasing import LeaseTimes
from orchestrator.ledger import leases
from orchestrator.ledger.store import Ledger


def replica_state(replica: dict[str, Any], times: LeaseTimes) -> str:
    """`running` (heartbeat within a lease term), `stopped` (a clean stop), or `lost` (no
    heartbeat for a term: killed, its host gone, or cut off from the ledger)."""
    if replica["stopped_at"] is not None:
        return "stopped"
    return "running" if replica["heartbeat_age"] < times.ttl else "lost"


async def report(ledger: Ledger, times: LeaseTimes) -> dict[str, Any]:
    async with ledger.read_engine.connect() as conn:
        view: dict[str, Any] = await conn.run_sync(leases.overview)
    for replica in view["replicas"]:
        replica["state"] = replica_state(replica, times)
    view["lease_seconds"] = times.lease
    return view


def table_rows(view: dict[str, Any]) -> list[tuple[str, ...]]:
    """One line per replica, running ones first, for the terminal and the status page."""
    order = {"running": 0, "lost": 1, "stopped": 2}
    rows = sorted(view["replicas"], key=lambda r: (order[r["state"]], r["started_at"] or ""))
    return [
        (
            r["id"],
            r["host"],
            str(r["pid"]),
            r["state"] + (" (leader)" if r["leader"] and r["state"] == "running" else ""),
            (r["started_at"] or "-").replace("T", " ").removesuffix("Z"),
            f"{r['heartbeat_age']:.0f}s ago",
            ", ".join(r["accounts"]) or "-",
        )
        for r in rows
    ]


HEADERS = ("replica", "host", "pid", "state", "started", "heartbeat", "accounts")
