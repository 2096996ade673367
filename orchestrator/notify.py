"""Notifications: `[[notify]]` webhooks told when a pipeline fails, recovers, is late, or an
account runs low on quota or credits. Slack-compatible JSON: `text`, plus the same facts as
fields (`event`, `pipeline`, `job_id`, ...).

Durable by construction: events are derived from what the ledger already holds (a job's
transition into FAILED or SUCCEEDED, scanned from a cursor kept in the ledger), written to the
`notifications` outbox under a unique key (event identity + target), and only then sent. A crash
at any point leaves either the transition not yet scanned (the cursor did not move) or an outbox
row not yet delivered: the next start finds both, and the unique key keeps a rescan from
doubling anything. Delivery retries with exponential backoff; at start everything pending is
tried at once.

The webhook URL is a credential (a Slack URL carries its token): the ledger keeps a digest of it,
never the URL, and logs and `--json` show it as `https://host/…#digest`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from orchestrator.config import Config, NotifyConfig
from orchestrator.engine.context import Context
from orchestrator.errors import ProviderError
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.pipelines import PipelineStatus, iso, statuses
from orchestrator.quota import quota_left

log = structlog.get_logger(__name__)
CURSOR = "notify.cursor"
MAX_ATTEMPTS = 12  # with the backoff below: about six hours of trying
BACKOFF_BASE = timedelta(seconds=5)
BACKOFF_CAP = timedelta(hours=1)
SEND_TIMEOUT = 10.0
CREDITS_LOW_SHARE = 0.1  # credits_low: under 10% of the account's credit limit left
CREDITS_EVERY = 600.0  # seconds between looks at an account's credits (a provider call)
SCAN_BATCH = 500
FINAL_ROUND = 10.0


def target_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def target_key(target: NotifyConfig) -> str:
    """A webhook entry's identity in the outbox: its URL and what it asked for (two entries may
    share a URL with different filters)."""
    ident = [target.url.get_secret_value(), sorted(target.on), target.pipelines]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]


def redact_url(url: str) -> str:
    """`https://hooks.slack.com/services/T0/B0/secret` → `https://hooks.slack.com/…#1a2b3c4d5e6f`."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…#{target_id(url)}"


def redact_text(text: str, urls: Iterable[str]) -> str:
    """Replace every URL of `urls` — and its path, its query, which an error may quote alone —
    with its redacted form."""
    for url in urls:
        parts = urlsplit(url)
        for piece in (url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.query):
            if len(piece) >= 4 and piece != "/":
                text = text.replace(piece, redact_url(url))
    return text


def backoff(attempts: int) -> timedelta:
    """Wait after the `attempts`-th failed delivery: 5 s, 10 s, 20 s, ... up to an hour."""
    factor: int = 2 ** max(0, min(attempts - 1, 20))
    return min(BACKOFF_CAP, BACKOFF_BASE * factor)


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    kind: str  # failed, recovered, late, quota_low, credits_low, test
    key: str  # the event's identity: the same event is never sent twice to one target
    text: str
    pipeline: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "event": self.kind, "pipeline": self.pipeline, **self.fields}


def wants(target: NotifyConfig, event: Event) -> bool:
    if event.kind == "test":
        return True
    if event.kind not in target.on:
        return False
    if target.pipelines is None or event.pipeline is None:
        return True
    return event.pipeline in target.pipelines


# --- events ------------------------------------------------------------------------------------


def failed_event(row: dict[str, Any]) -> Event:
    error = (row["error"] or "no error recorded")[:500]
    return Event(
        kind="failed",
        key=f"failed:job:{row['id']}",
        pipeline=row["pipeline"],
        text=f":x: pipeline {row['pipeline']} failed: job {row['id']} after "
        f"{row['attempts']} attempt(s): {error}",
        fields={
            "job_id": row["id"],
            "kind": row["kind"],
            "provider": row["provider"],
            "attempts": row["attempts"],
            "error": error,
            "at": iso(row["at"]),
        },
    )


def recovered_event(row: dict[str, Any]) -> Event:
    return Event(
        kind="recovered",
        key=f"recovered:job:{row['id']}",
        pipeline=row["pipeline"],
        text=f":white_check_mark: pipeline {row['pipeline']} recovered: job {row['id']} "
        "succeeded after a failure",
        fields={
            "job_id": row["id"],
            "kind": row["kind"],
            "provider": row["provider"],
            "at": iso(row["at"]),
        },
    )


def late_event(status: PipelineStatus) -> Event:
    p, runs = status.config, status.runs
    since = (runs.last_success_at or runs.first_created_at) if runs else None
    what = "no success since" if runs and runs.last_success_at else "never succeeded; first job"
    return Event(
        kind="late",
        key=f"late:{p.name}:{iso(since)}",  # one per lateness episode
        pipeline=p.name,
        text=f":hourglass: pipeline {p.name} is late: {what} {iso(since)} "
        f"(schedule {p.schedule!r})",
        fields={
            "kind": p.kind,
            "provider": p.provider,
            "schedule": p.schedule,
            "last_success_at": iso(runs.last_success_at) if runs else None,
            "next_fire": iso(status.next_fire),
        },
    )


def quota_low_event(provider: str, left: int, reserve: int, now: datetime) -> Event:
    return Event(
        kind="quota_low",
        key=f"quota_low:{provider}:{now:%Y-%m-%d}",  # at most once a day per account
        text=f":warning: {provider}: {left} submission(s) left in the rolling 30 days, at or "
        f"below the quota_reserve of {reserve}; the daemon has stopped submitting there",
        fields={"provider": provider, "left": left, "reserve": reserve},
    )


def credits_low_event(provider: str, remaining: int, limit: int, now: datetime) -> Event:
    return Event(
        kind="credits_low",
        key=f"credits_low:{provider}:{now:%Y-%m-%d}",
        text=f":warning: {provider}: {remaining} of {limit} credits left",
        fields={"provider": provider, "remaining": remaining, "limit": limit},
    )


def sample_event(now: datetime) -> Event:
    return Event(
        kind="test",
        key=f"test:{now.isoformat()}",
        text=":wave: test notification from orchestrator (`orchestrator notify test`)",
        fields={"at": iso(now)},
    )


# --- the outbox --------------------------------------------------------------------------------


class DeliveryError(Exception):
    pass


class Notifications:
    """Scans the ledger for events, queues them in the outbox, delivers them. One per daemon."""

    def __init__(self, cfg: Config, ledger: Ledger) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.targets = {target_key(t): t for t in cfg.notify}
        self._urls = [t.url.get_secret_value() for t in cfg.notify]
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    def redact(self, text: str) -> str:
        return redact_text(text, self._urls)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- events into the outbox ---------------------------------------------------------------
    async def queue(self, events: Sequence[Event]) -> int:
        rows = [
            {
                "key": f"{e.key}|{tid}",
                "target": tid,
                "event": e.kind,
                "pipeline": e.pipeline,
                "payload": e.payload(),
            }
            for e in events
            for tid, target in self.targets.items()
            if wants(target, e)
        ]
        return await self.ledger.outbox_add(rows)

    async def start(self) -> None:
        """Set the cursor, if the ledger has none, to its present: run before any job can move,
        so a failure during this process's life is never taken for history."""
        if self.enabled and await self.ledger.ops_value(CURSOR) is None:
            await self.ledger.set_ops_value(CURSOR, str(await self.ledger.max_transition_id()))

    async def scan(self) -> int:
        """Queue the failures and recoveries the ledger recorded since the cursor. The first
        scan of a ledger starts at its present: history is not announced."""
        stored = await self.ledger.ops_value(CURSOR)
        if stored is None:
            await self.start()
            return 0
        cursor, queued = int(stored), 0
        while rows := await self.ledger.finished_since(cursor, SCAN_BATCH):
            queued += await self.queue(await self._events_of(rows))  # durable, then the cursor
            cursor = rows[-1]["tid"]
            await self.ledger.set_ops_value(CURSOR, str(cursor))
        return queued

    async def _events_of(self, rows: Sequence[dict[str, Any]]) -> list[Event]:
        """Failures, and successes right after a failure of their pipeline. One ledger look per
        pipeline and batch at most (then the batch itself, in order, tells the rest), and none
        for pipelines no target wants `recovered` for: the scan stays cheap at full speed."""
        last: dict[str, str | None] = {}
        events = []
        for row in rows:
            pipeline = row["pipeline"]
            if row["to_state"] == "FAILED":
                events.append(failed_event(row))
            elif self._wants(pipeline, "recovered"):
                if pipeline in last:
                    before = last[pipeline]
                else:
                    before = await self.ledger.previous_outcome(pipeline, row["id"], row["at"])
                if before == "FAILED":
                    events.append(recovered_event(row))
            last[pipeline] = row["to_state"]
        return events

    def _wants(self, pipeline: str, kind: str) -> bool:
        return any(
            kind in t.on and (t.pipelines is None or pipeline in t.pipelines)
            for t in self.targets.values()
        )

    async def observe(
        self, statuses: Sequence[PipelineStatus], accounts: dict[str, dict[str, Any]]
    ) -> int:
        """Queue `late`, `quota_low` and `credits_low` from the daemon's current view:
        `accounts` maps a provider account to its `left`/`reserve` quota and, where it has
        credits, `credits_remaining`/`credits_limit`."""
        now = utcnow()
        events = [late_event(s) for s in statuses if s.health == "late"]
        for name, a in accounts.items():
            if a.get("left") is not None and a["left"] <= a.get("reserve", 0):
                events.append(quota_low_event(name, a["left"], a.get("reserve", 0), now))
            remaining, limit = a.get("credits_remaining"), a.get("credits_limit")
            if remaining is not None and limit and remaining < CREDITS_LOW_SHARE * limit:
                events.append(credits_low_event(name, remaining, limit, now))
        return await self.queue(events)

    # --- delivery -----------------------------------------------------------------------------
    async def deliver_due(self, *, everything: bool = False) -> int:
        """Send what is due (`everything`: all pending, as at start); returns how many went."""
        now = utcnow()
        when = now + timedelta(days=3650) if everything else now
        sent, failing = 0, set()
        for row in await self.ledger.outbox_due(when, limit=100):
            if row["target"] in failing:  # it just failed: one timeout per webhook per round
                continue
            if await self._deliver(row):
                sent += 1
            else:
                failing.add(row["target"])
        return sent

    async def _deliver(self, row: dict[str, Any]) -> bool:
        target = self.targets.get(row["target"])
        if target is None:
            await self.ledger.outbox_update(
                row["id"], state="ABANDONED", last_error="webhook no longer configured"
            )
            return False
        url = target.url.get_secret_value()
        attempts = row["attempts"] + 1
        try:
            await self.send(url, row["payload"])
        except DeliveryError as exc:
            error = self.redact(str(exc))
            give_up = attempts >= MAX_ATTEMPTS
            await self.ledger.outbox_update(
                row["id"],
                attempts=attempts,
                last_error=error,
                state="ABANDONED" if give_up else "PENDING",
                next_attempt_at=utcnow() + backoff(attempts),
            )
            log.warning(
                "notification_failed",
                notification_id=row["id"],
                target=redact_url(url),
                attempts=attempts,
                abandoned=give_up,
                error=error,
            )
            return False
        await self.ledger.outbox_update(
            row["id"], attempts=attempts, state="DELIVERED", delivered_at=utcnow()
        )
        log.info("notification_sent", notification_id=row["id"], kind=row["event"])
        return True

    async def send(self, url: str, payload: dict[str, Any]) -> None:
        """POST the JSON body; anything but a 2xx answer in time is a DeliveryError."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT))
        try:
            async with self._session.post(url, json=payload, allow_redirects=False) as resp:
                if not 200 <= resp.status < 300:
                    body = (await resp.content.read(200)).decode("utf-8", "replace")
                    raise DeliveryError(f"HTTP {resp.status}: {body}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}" if str(exc) else "timeout") from None

    async def send_test(self) -> dict[str, str | None]:
        """`notify test`: one test notification straight to every webhook URL (no outbox); the
        error per redacted URL, None where it was delivered."""
        event = sample_event(utcnow())
        out: dict[str, str | None] = {}
        for url in dict.fromkeys(self._urls):  # once per URL, in config order
            try:
                await self.send(url, event.payload())
                out[redact_url(url)] = None
            except DeliveryError as exc:
                out[redact_url(url)] = self.redact(str(exc))
        return out

    # --- the daemon's loop ----------------------------------------------------------------------
    async def run(
        self,
        stopping: asyncio.Event,
        view: Callable[[], Any],
        interval: float = 1.0,
        observe_every: float = 30.0,
        leader: Callable[[], bool] = lambda: True,
    ) -> None:
        """Scan and deliver every `interval`; every `observe_every`, look for late pipelines and
        low quota/credits through `view()` (awaitable of (statuses, accounts)).

        Replicas (README "Replicas"): every replica observes the accounts it holds (their quota
        and credits are known only there); the one holding the leader's lease (`leader()`) also
        scans the transitions, looks for late pipelines and delivers the outbox."""
        first, last_observe = True, float("-inf")
        loop = asyncio.get_running_loop()
        while True:  # one round even when stopping already: a short run still sends its news
            lead = leader()
            if lead:
                await self.scan()
            if loop.time() - last_observe >= observe_every:
                last_observe = loop.time()
                statuses, accounts = await view()
                await self.observe(statuses if lead else [], accounts)
            if lead:
                await self.deliver_due(everything=first)
                first = False
            if stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stopping.wait()

    async def final_round(self) -> None:
        """On the way out: queue what the last jobs did and try to send it once (at most
        FINAL_ROUND seconds; what is left stays in the outbox for the next start)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_ROUND):
                await self.scan()
                await self.deliver_due()


def outbox_dicts(cfg: Config, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`notify list --json`: outbox rows with the target shown as its redacted URL."""
    urls = {target_key(t): t.url.get_secret_value() for t in cfg.notify}
    out = []
    for r in rows:
        url = urls.get(r["target"])
        out.append(
            {
                "id": r["id"],
                "event": r["event"],
                "pipeline": r["pipeline"],
                "url": redact_url(url) if url else f"(no longer configured)#{r['target']}",
                "state": r["state"],
                "attempts": r["attempts"],
                "created_at": iso(_utc(r["created_at"])),
                "delivered_at": iso(_utc(r["delivered_at"])),
                "last_error": r["last_error"],
                "text": r["payload"].get("text"),
            }
        )
    return out


def _utc(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


class DaemonView:
    """What `Notifications.observe` needs, read from a running daemon's context: pipeline
    statuses, each account's quota left and reserve, and (every CREDITS_EVERY seconds, one
    `GET /usage/`) the credits of accounts that have them."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._credits: dict[str, dict[str, Any]] = {}
        self._credits_at = float("-inf")

    async def __call__(self) -> tuple[list[PipelineStatus], dict[str, dict[str, Any]]]:
        ctx = self.ctx
        # Accounts whose lease this replica holds: their budgets are live here, and only their
        # holder may call them (`GET /usage/` too). Replicas: see README "Replicas".
        accounts = {
            name: {"left": quota_left(b), "reserve": b.caps.reserve}
            for name, b in ctx.budgets.items()
            if ctx.may_call(name)
        }
        loop = asyncio.get_running_loop()
        if loop.time() - self._credits_at >= CREDITS_EVERY:
            self._credits_at = loop.time()
            self._credits = await self._read_credits()
        for name, credits in self._credits.items():
            accounts.setdefault(name, {}).update(credits)
        return await statuses(ctx.cfg, ctx.ledger), accounts

    async def _read_credits(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, adapter in self.ctx.adapters.items():
            usage = getattr(adapter, "usage", None)
            if usage is None or not self.ctx.may_call(name):
                continue
            try:
                credits = (await usage()).get("credits") or {}
            except ProviderError as exc:
                log.warning("credits_unreadable", provider=name, error=str(exc))
                continue
            remaining, limit = credits.get("remaining"), credits.get("limit")
            if isinstance(remaining, int) and isinstance(limit, int):
                out[name] = {"credits_remaining": remaining, "credits_limit": limit}
        return out
