"""Prometheus metrics of one daemon (its own registry, so several daemons can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600, 21600)


class _Snapshot(Collector):
    """Values read at scrape time from what the daemon already holds."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Any]:
        data = self.read()
        jobs = GaugeMetricFamily(
            "orchestrator_jobs", "Jobs in the ledger by state", labels=["provider", "kind", "state"]
        )
        for (provider, kind, state), n in data.get("jobs", {}).items():
            jobs.add_metric([provider, kind, state], n)
        yield jobs
        http = CounterMetricFamily(
            "orchestrator_http_responses", "HTTP responses by status", labels=["provider", "status"]
        )
        for (provider, status), n in data.get("http", {}).items():
            http.add_metric([provider, str(status)], n)
        yield http
        quota = GaugeMetricFamily(
            "orchestrator_quota_remaining",
            "Submissions left in the rolling window",
            labels=["provider"],
        )
        slots = GaugeMetricFamily(
            "orchestrator_concurrency_in_use", "Remote jobs queued or running", labels=["provider"]
        )
        limit = GaugeMetricFamily(
            "orchestrator_concurrency_limit", "Concurrency limit in force", labels=["provider"]
        )
        for provider, b in data.get("budgets", {}).items():
            if b["free_quota"] is not None:
                quota.add_metric([provider], b["free_quota"])
            slots.add_metric([provider], b["in_flight"])
            if b["limit"] is not None:
                limit.add_metric([provider], b["limit"])
        yield quota
        yield slots
        yield limit
        yield from _quota_left(data.get("budgets", {}))
        yield from _replica(data.get("replica"))
        yield from _pipelines(data.get("pipelines", []))


def _replica(info: dict[str, Any] | None) -> Iterable[Any]:
    """This replica's leases: which accounts it holds (every account has a row, 0 or 1, so a
    sum over replicas shows an account held by none, or — never — by two)."""
    if not info:
        return
    labels = ["replica", "host"]
    up = GaugeMetricFamily("orchestrator_replica_info", "This daemon's replica id", labels=labels)
    up.add_metric([info["id"], info["host"]], 1)
    held = GaugeMetricFamily(
        "orchestrator_lease_held",
        "1 when this replica holds the account's lease (does its remote work)",
        labels=["replica", "account"],
    )
    for account in info["accounts"]:
        held.add_metric([info["id"], account], 1 if account in info["held"] else 0)
    leader = GaugeMetricFamily(
        "orchestrator_replica_leader",
        "1 when this replica sends notifications and prunes",
        labels=["replica"],
    )
    leader.add_metric([info["id"]], 1 if info["leader"] else 0)
    live = GaugeMetricFamily(
        "orchestrator_replicas_live", "Replicas heartbeating on this ledger", labels=["replica"]
    )
    live.add_metric([info["id"]], info["live"])
    takeovers = CounterMetricFamily(
        "orchestrator_lease_takeovers",
        "Accounts this replica took over from another replica",
        labels=["replica"],
    )
    takeovers.add_metric([info["id"]], info["takeovers"])
    yield from (up, held, leader, live, takeovers)


def _quota_left(budgets: dict[str, Any]) -> Iterable[Any]:
    left = GaugeMetricFamily(
        "orchestrator_quota_left",
        "Submissions left in the rolling window before the reserve is taken off (negative: "
        "the reserve is being eaten into)",
        labels=["provider"],
    )
    reserve = GaugeMetricFamily(
        "orchestrator_quota_reserve",
        "Submissions kept back for other users of the account (quota_reserve)",
        labels=["provider"],
    )
    for provider, b in budgets.items():
        if b.get("left") is not None:
            left.add_metric([provider], b["left"])
        reserve.add_metric([provider], b.get("reserve", 0))
    yield left
    yield reserve


def _pipelines(rows: list[dict[str, Any]]) -> Iterable[Any]:
    """Per pipeline, from `orchestrator pipelines` rows (unknown values are left out, not 0)."""
    labels = ["pipeline", "kind", "provider"]
    success = GaugeMetricFamily(
        "orchestrator_pipeline_last_success_timestamp_seconds",
        "When the pipeline's last successful job finished (Unix time)",
        labels=labels,
    )
    failures = GaugeMetricFamily(
        "orchestrator_pipeline_consecutive_failures",
        "FAILED jobs of the pipeline since its last success",
        labels=labels,
    )
    next_fire = GaugeMetricFamily(
        "orchestrator_pipeline_next_fire_timestamp_seconds",
        "The pipeline's next scheduled fire (Unix time)",
        labels=labels,
    )
    interval = GaugeMetricFamily(
        "orchestrator_pipeline_interval_seconds",
        "The longest gap between the schedule's next fires",
        labels=labels,
    )
    for r in rows:
        values = [r["name"], r["kind"], r["provider"]]
        failures.add_metric(values, r["consecutive_failures"])
        for family, key in (
            (success, "last_success_ts"),
            (next_fire, "next_fire_ts"),
            (interval, "interval_seconds"),
        ):
            if r.get(key) is not None:
                family.add_metric(values, r[key])
    yield from (success, failures, next_fire, interval)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.submissions = Counter(
            "orchestrator_submissions", "Remote jobs created", ["provider", "kind"], registry=r
        )
        self.polls = Counter("orchestrator_polls", "Status polls", ["provider"], registry=r)
        self.retries = Counter(
            "orchestrator_retries", "Jobs sent to RETRY_WAIT", ["provider"], registry=r
        )
        self.job_seconds = Histogram(
            "orchestrator_job_duration_seconds",
            "Enqueue to terminal state",
            ["provider", "kind", "state"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.poll_seconds = Histogram(
            "orchestrator_poll_request_seconds",
            "Latency of one status poll",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ledger_commit_seconds = Histogram(
            "orchestrator_ledger_commit_seconds",
            "Latency of one grouped ledger commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot: dict[str, Any] = {}
        r.register(_Snapshot(lambda: self.snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
