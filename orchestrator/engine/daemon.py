"""Wires the pieces, runs them under one TaskGroup, and stops them in one shape:
stop() sets an event; claiming stops; in-flight work gets `drain_timeout` to finish; the rest is
cancelled and left resumable in the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace

import structlog
from sqlalchemy.exc import DBAPIError

from orchestrator.config import Config
from orchestrator.domain import Job, JobState, RemoteState, RemoteStatus
from orchestrator.engine.context import Context
from orchestrator.engine.dispatcher import Dispatcher
from orchestrator.engine.fetcher import Fetcher
from orchestrator.engine.ownership import Hooks, Ownership
from orchestrator.engine.poller import Poller
from orchestrator.engine.recovery import reconcile_submitting, recover
from orchestrator.engine.worker import Worker
from orchestrator.errors import ConfigError, ProviderError
from orchestrator.leasing import LeaseTimes, settle_pause
from orchestrator.ledger import migrate
from orchestrator.ledger.single import DaemonLock, LedgerInUse, lock_path
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.limits import AccountBudget
from orchestrator.notify import DaemonView, Notifications
from orchestrator.retention import run_daily
from orchestrator.runtime import tune_gc
from orchestrator.scheduler import PipelineScheduler, trigger
from orchestrator.sdnotify import Notifier
from orchestrator.web import StatusServer

log = structlog.get_logger(__name__)
UNRESOLVED_RETRY = 15.0


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        exit_when_idle: bool = False,
        once: bool = False,
        install_signals: bool = False,
        tune_gc: bool = False,
    ) -> None:
        self.cfg = cfg
        self.exit_when_idle = exit_when_idle or once
        self.once = once
        self.install_signals = install_signals
        self.tune_gc = tune_gc  # the process is the daemon's alone (see runtime.tune_gc)
        self.ledger = Ledger(cfg.ledger.url)
        self.ctx = Context.build(cfg, self.ledger)
        self.poller = Poller(self.ctx, self._on_remote_done, self._on_remote_ended)
        self.fetcher = Fetcher(self.ctx)
        self.worker = Worker(self.ctx, self.fetcher.committer)
        self.dispatcher = Dispatcher(self.ctx, self._on_submitted, self.worker.start)
        self.scheduler = PipelineScheduler(cfg, self.ledger, on_enqueued=self._on_enqueued)
        self.ready = asyncio.Event()
        self.web = StatusServer(self)
        self.notifier = Notifier()
        self.notifications = Notifications(cfg, self.ledger)  # [[notify]] webhooks
        self.ledger.on_commit = self.ctx.metrics.ledger_commit_seconds.observe
        self._signals = 0
        self._last_refresh: dict[str, float] = {}
        self._last_unresolved = 0.0
        self._stuck: set[int] = set()  # jobs left waiting for the operator at an idle exit
        path = lock_path(self.ledger.url)
        self._lock = DaemonLock(path) if path is not None else None
        # Which accounts this process may call: leases in the ledger (engine/ownership.py). On
        # SQLite the daemon lock proves no other daemon lives, so it takes every lease at once.
        self.ownership = Ownership(
            self.ctx,
            self.ledger,
            sorted(self.ctx.adapters),
            LeaseTimes(cfg.ledger.lease),
            Hooks(
                acquired=self._acquired,
                lost=self._lost,
                busy=self._busy_for,
                idle=lambda account: self.ctx.adapters[account].http.pace.idle_for(),
            ),
            exclusive=self.ledger.is_sqlite,
        )
        self._owning = False

    # --- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        self.ctx.stopping.set()
        self.ctx.wake_dispatch.set()
        self.poller.wake()

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stopping", reason="signal", drain_timeout=self.cfg.daemon.drain_timeout)
            self.stop()
        else:
            log.warning("stopping_now", reason="second signal")
            self.dispatcher.cancel_all()
            self.fetcher.cancel_all()
            self.worker.cancel_all()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self.install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        structlog.contextvars.bind_contextvars(replica=self.ownership.me.id)
        try:
            await self._start_environment()
            await self.ledger.start()
            await self.notifications.start()
            self._owning = True
            # The first heartbeat: the accounts taken now are recovered before any new work.
            await self.ownership.start()
            if self.once:
                for p in self.cfg.pipelines:
                    if p.enabled:
                        await trigger(self.ledger, p, reason="run --once")
            if not self.exit_when_idle:
                await self.scheduler.start()
            if self.tune_gc:
                tune_gc()
            self.ready.set()
            log.info(
                "daemon_ready",
                providers=sorted(self.ctx.adapters),
                accounts_held=sorted(self.ownership.held),
                tracked=len(self.poller),
            )
            self.notifier.notify("READY=1", self._status_line())
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.poller.run(), name="poller")
                tg.create_task(self._main_loop(), name="dispatcher")
                tg.create_task(self.ownership.run(self.ctx.stopping), name="leases")
                if self.notifier.enabled:
                    tg.create_task(self._notify_loop(), name="sd-notify")
                if not self.exit_when_idle and (
                    self.cfg.retention.results or self.cfg.retention.jobs
                ):
                    tg.create_task(
                        self._as_leader(lambda stop: run_daily(self.cfg, self.ledger, stop)),
                        name="retention",
                    )
                if self.notifications.enabled:
                    tg.create_task(
                        self.notifications.run(
                            self.ctx.stopping,
                            DaemonView(self.ctx),
                            interval=self.cfg.daemon.claim_interval,
                            leader=lambda: self.ownership.leader,
                        ),
                        name="notifications",
                    )
        finally:
            await self._shutdown()
            if self.install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        if self._signals:  # a stop asked for (systemctl stop, docker stop) went as planned
            return 0
        failed = self.ctx.stats.finished.get(JobState.FAILED.value, 0)
        return 1 if failed or self._stuck else 0

    async def _start_environment(self) -> None:
        """The status port and the ledger: what the machine may refuse. A refusal is one line
        naming the config key (ConfigError), not a traceback."""
        if self._lock is not None:  # one daemon per SQLite ledger (ledger/single.py)
            try:
                self._lock.acquire()
            except LedgerInUse as exc:
                where = self.cfg.where("ledger", "url")
                raise ConfigError(
                    [
                        f"{where}: ledger.url: another daemon runs on this ledger ({exc}); "
                        "a SQLite ledger takes one daemon — stop that one first"
                    ]
                ) from None
            except OSError as exc:
                where = self.cfg.where("ledger", "url")
                raise ConfigError(
                    [f"{where}: ledger.url: cannot lock {self._lock.path}: {exc.strerror}"]
                ) from None
        web = self.cfg.web
        if web.enabled and not self.exit_when_idle:
            # Up before migrating, so /readyz can say "not yet" instead of nothing.
            try:
                await self.web.start(web.host, web.port)
            except OSError as exc:
                why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
                where = self.cfg.where("web", "port")
                raise ConfigError(
                    [f"{where}: web.port: cannot listen on {web.host}:{web.port}: {why}"]
                ) from None
        try:
            await migrate.upgrade(self.ledger)
        except (OSError, DBAPIError) as exc:
            where = self.cfg.where("ledger", "url")
            cause = getattr(exc, "orig", None) or exc
            raise ConfigError([f"{where}: ledger.url: cannot open the ledger: {cause}"]) from None

    def _status_line(self) -> str:
        return (
            f"STATUS=in flight: {len(self.poller)} polling, {self.dispatcher.busy} submitting, "
            f"{self.fetcher.busy} fetching, {self.worker.busy} working; "
            f"finished {sum(self.ctx.stats.finished.values())}"
        )

    async def _notify_loop(self) -> None:
        """WATCHDOG=1 from the event loop itself (a stuck loop stops the keep-alives), at half of
        WatchdogSec, and a STATUS= line with the work in flight."""
        interval = self.notifier.watchdog_interval() or 5.0
        while not self.ctx.stopping.is_set():
            lines = [self._status_line()]
            if self.notifier.watchdog_interval() is not None:
                lines.insert(0, "WATCHDOG=1")
            self.notifier.notify(*lines)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self.ctx.stopping.wait()

    async def _shutdown(self) -> None:
        self.notifier.notify("STOPPING=1", self._status_line())
        self.ctx.stopping.set()
        self.scheduler.shutdown()
        drain = self.cfg.daemon.drain_timeout
        await self.dispatcher.drain(drain)
        await self.fetcher.drain(drain)
        await self.worker.drain(drain)
        self.dispatcher.cancel_all()
        self.fetcher.cancel_all()
        self.worker.cancel_all()
        await asyncio.shield(self._close())

    async def _close(self) -> None:
        await asyncio.sleep(0)  # let cancelled tasks run their cleanup
        await self.web.stop()
        self.notifier.close()
        if self.notifications.enabled and self.ready.is_set() and self.ownership.leader:
            await self.notifications.final_round()  # what the last jobs did, sent once
        await self.notifications.close()
        await self.ctx.close()
        if self._owning:
            await self.ownership.stop()  # leases back at once: others take over now
        await self.ledger.close()
        if self._lock is not None:
            self._lock.release()
        log.info("daemon_stopped", finished=dict(self.ctx.stats.finished))

    # --- the claim loop ---------------------------------------------------------------------
    async def _main_loop(self) -> None:
        interval = self.cfg.daemon.claim_interval
        last_housekeeping = 0.0
        while not self.ctx.stopping.is_set():
            self.ctx.wake_dispatch.clear()
            # Housekeeping reads the ledger for work of other processes and due retries: on its
            # own cadence, not on every wake-up (those come once per finished submit).
            try:
                if time.monotonic() - last_housekeeping >= interval:
                    last_housekeeping = time.monotonic()
                    await self._housekeeping()
                started = await self.dispatcher.dispatch()
            except (OSError, DBAPIError) as exc:
                # The ledger is away (a restart, a partition): nothing is claimed meanwhile;
                # the leases fence this replica's calls if it stays away (engine/ownership.py).
                log.warning("ledger_unavailable", error=str(getattr(exc, "orig", None) or exc))
                started = 0
            if self.exit_when_idle and await self._idle(started):
                log.info("idle_exit", waiting_for_operator=sorted(self._stuck))
                self.stop()
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self.ctx.wake_dispatch.wait()

    async def _idle(self, started: int) -> bool:
        if self.dispatcher.busy or self.fetcher.busy or self.worker.busy or len(self.poller):
            return False
        waiting = self.dispatcher.waiting_for_operator()
        if waiting and not started and set(self.dispatcher.unresolved) == set(waiting):
            # Nothing moves until the operator decides (jobs adopt / jobs resubmit): say so
            # and exit 1 rather than wait forever; the next run resumes where this one stands.
            for job_id, reason in waiting.items():
                log.warning("waiting_for_operator", job_id=job_id, reason=reason)
            self._stuck = set(waiting)
            return True
        return not await self.ledger.has_unfinished()

    async def _housekeeping(self) -> None:
        await self._release_retries()
        await self._handle_cancels_and_deadlines()
        await self._refresh_limits()
        await self.dispatcher.check_operator()
        await self._retry_unresolved()

    async def _release_retries(self) -> None:
        for job in await self.ledger.due_retries(utcnow()):
            if not self.ctx.may_call(job.provider):
                continue
            with contextlib.suppress(Exception):
                await self.ledger.transition(
                    job, JobState.RETRY_WAIT, JobState.PENDING, reason="retry"
                )

    async def _handle_cancels_and_deadlines(self) -> None:
        for job in await self.ledger.running_to_stop(utcnow()):
            if not self.ctx.may_call(job.provider):
                continue  # another replica's account
            if job.cancel_requested:
                await self._cancel_remote(job, JobState.CANCELLED, "cancelled by user")
            elif self.ctx.deadline_passed(job):
                await self._cancel_remote(job, JobState.FAILED, "deadline exceeded")

    async def _cancel_remote(self, job: Job, to: JobState, reason: str) -> None:
        await self.worker.stop(job.id)  # a staged job: stop making calls first
        try:
            await self.ctx.adapters[job.provider].cancel(job)
        except ProviderError as exc:
            log.warning("cancel_failed", job_id=job.id, error=str(exc))
            return
        self.poller.forget(job.id)
        try:
            await self.ledger.transition(
                job,
                JobState.RUNNING,
                to,
                reason=reason,
                refund_quota=True,
                error=None if to == JobState.CANCELLED else f"{reason}; remote job cancelled",
            )
        except Exception as exc:
            log.info("cancel_raced", job_id=job.id, error=str(exc))
            return
        self.ctx.budget_for(job).on_slot_released(job.id)
        self.ctx.finished(job, to)
        self.ctx.wake_dispatch.set()

    async def _refresh_limits(self) -> None:
        now = time.monotonic()
        for provider in self.ctx.budgets:
            if not self.ctx.may_call(provider):
                continue
            every = self.cfg.providers[provider].limits_refresh
            if now - self._last_refresh.get(provider, 0.0) >= every:
                self._last_refresh[provider] = now
                await self.ctx.refresh_budget(provider)

    async def _retry_unresolved(self) -> None:
        if not self.dispatcher.unresolved:
            return
        if time.monotonic() - self._last_unresolved < UNRESOLVED_RETRY:
            return
        self._last_unresolved = time.monotonic()
        await reconcile_submitting(
            self.ctx, self.dispatcher, list(self.dispatcher.unresolved.values())
        )

    # --- leases (engine/ownership.py) -------------------------------------------------------
    async def _acquired(self, account: str, since_other: float | None) -> None:
        """An account is ours (at start, or taken over from a replica that stopped renewing):
        wait out the previous owner's rate windows, read its limits, and reconcile its jobs in
        flight exactly as after a crash."""
        adapter = self.ctx.adapters[account]
        pace = adapter.http.pace
        pause = settle_pause(pace.binding_periods(), since_other)
        if pause:
            pace.pause(pause)
        if account in self.ctx.budgets:
            await self.ctx.refresh_budget(account)
            self._last_refresh[account] = time.monotonic()
        await recover(
            self.ctx, self.dispatcher, self.poller, self.fetcher, self.worker, accounts=[account]
        )
        self.dispatcher.invalidate()

    async def _lost(self, account: str) -> None:
        """The account's lease is gone (given back, expired, the ledger unreachable): stop every
        call of it here now; its jobs stay as the ledger has them for the next owner."""
        self.poller.forget_account(account)
        await self.dispatcher.drop_account(account)
        await self.fetcher.cancel_account(account)
        await self.worker.cancel_account(account)
        old = self.ctx.budgets.get(account)
        if old is not None:  # the next time it is ours, its counts come from the ledger again
            self.ctx.budgets[account] = AccountBudget(caps=old.caps)

    def _busy_for(self, account: str) -> int:
        return (
            self.dispatcher.busy_for(account)
            + self.fetcher.busy_for(account)
            + self.worker.busy_for(account)
        )

    async def _as_leader(
        self, work: Callable[[asyncio.Event], Coroutine[None, None, None]]
    ) -> None:
        """Run `work` (the daily prune) only while this replica holds the leader's lease."""
        every = self.ownership.times.heartbeat
        while not self.ctx.stopping.is_set():
            if not self.ownership.leader:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every):
                        await self.ctx.stopping.wait()
                continue
            stop = asyncio.Event()
            task = asyncio.create_task(work(stop))
            while self.ownership.leader and not self.ctx.stopping.is_set() and not task.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every):
                        await self.ctx.stopping.wait()
            stop.set()
            await task

    # --- callbacks from the parts -----------------------------------------------------------
    def _on_enqueued(self) -> None:
        self.dispatcher.invalidate()
        self.ctx.wake_dispatch.set()

    def _on_submitted(self, job: Job) -> None:
        self.poller.add(job)

    async def _on_remote_done(self, job: Job) -> None:
        now = utcnow()
        # The provider freed the slot the moment the job ended: refill it without waiting for
        # our own bookkeeping to commit.
        self.ctx.budget_for(job).on_slot_released(job.id)
        self.ctx.wake_dispatch.set()
        try:
            await self.ledger.transition(
                job,
                JobState.RUNNING,
                JobState.FETCHING,
                reason="remote job done",
                remote_done_at=now,
            )
        except Exception as exc:  # cancelled meanwhile
            log.info("done_raced", job_id=job.id, error=str(exc))
            return
        self.fetcher.start(replace(job, state=JobState.FETCHING))

    async def _on_remote_ended(self, job: Job, status: RemoteStatus) -> None:
        ctx = self.ctx
        ctx.budget_for(job).on_slot_released(job.id)
        ctx.wake_dispatch.set()
        error = (
            f"{job.provider}: remote job {job.remote_id} ended {status.raw_status or status.state}"
        )
        refund = status.state == RemoteState.CANCELLED  # a cancelled export frees its quota
        if job.attempts < job.max_attempts:
            wait = ctx.retry_at(job.attempts)
            await self._safe_transition(
                job,
                JobState.RETRY_WAIT,
                reason="remote job failed",
                error=error,
                refund_quota=refund,
                next_attempt_at=utcnow() + wait,
            )
            ctx.retried(job)
            log.warning(
                "job_retry_scheduled", job_id=job.id, wait=wait.total_seconds(), error=error
            )
            return
        if await self._safe_transition(
            job, JobState.FAILED, reason="remote job failed", error=error, refund_quota=refund
        ):
            ctx.finished(job, JobState.FAILED)

    async def _safe_transition(self, job: Job, to: JobState, **kw: object) -> bool:
        try:
            await self.ledger.transition(job, JobState.RUNNING, to, **kw)  # type: ignore[arg-type]
        except Exception as exc:
            log.info("transition_raced", job_id=job.id, error=str(exc))
            return False
        return True
