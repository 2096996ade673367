"""This replica's share of the provider accounts, kept by a heartbeat (orchestrator.leasing has
the rules, orchestrator.ledger.leases the statements).

Each heartbeat renews the leases held, takes free or expired ones up to the fair share, and
gives back a surplus once its calls in flight have ended. An account taken goes through the same
reconciliation as crash recovery before anything new is submitted to it (`Hooks.acquired`); an
account lost — a lease not renewed in time, the database unreachable for `fence` seconds — has
every local task of it stopped at once (`Hooks.lost`), so no call of it leaves this process
after another replica may have taken it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from orchestrator import __version__
from orchestrator.engine.context import Context
from orchestrator.leasing import LeaseTimes
from orchestrator.ledger import leases
from orchestrator.ledger.leases import Replica, Round
from orchestrator.ledger.store import Ledger

log = structlog.get_logger(__name__)
EXPIRY_MARGIN = 0.02  # seconds after another replica's lease expires before looking again


def new_replica(host: str | None = None) -> Replica:
    host = host or socket.gethostname()
    pid = os.getpid()
    return Replica(
        id=f"{host[:40]}-{pid}-{secrets.token_hex(3)}", host=host, pid=pid, version=__version__
    )


@dataclass(frozen=True)
class Hooks:
    acquired: Callable[[str, float | None], Awaitable[None]]  # (account, seconds since other)
    lost: Callable[[str], Awaitable[None]]  # stop every local task of the account now
    busy: Callable[[str], int]  # the account's calls in flight here (submits, downloads, sends)
    idle: Callable[[str], float | None]  # seconds since its last call here (None: never)


class Ownership:
    def __init__(
        self,
        ctx: Context,
        ledger: Ledger,
        accounts: list[str],
        times: LeaseTimes,
        hooks: Hooks,
        *,
        exclusive: bool,
        replica: Replica | None = None,
    ) -> None:
        self.ctx = ctx
        self.ledger = ledger
        self.accounts = sorted(accounts)
        self.times = times
        self.hooks = hooks
        self.exclusive = exclusive
        self.me = replica or new_replica()
        self.held: set[str] = set()
        self.leader = False
        self.live = 1
        self.takeovers = 0
        self._giving: dict[str, float] = {}  # account -> monotonic time its give-back began
        self._last_ok = time.monotonic()
        self._next_round = time.monotonic()  # when run() starts the next round
        self._tasks: set[asyncio.Task[None]] = set()
        self._calls: set[str] = set()  # = ctx.held: nothing may be called until a lease says so
        ctx.held = self._calls

    async def start(self) -> None:
        """Register, then the first round; accounts taken now are recovered before returning
        (start-up recovery, as with one daemon)."""
        await self.ledger.run_write(functools.partial(leases.register, me=self.me))
        if self.exclusive:
            await self.ledger.run_write(functools.partial(leases.retire_others, me=self.me))
        await self.round(inline=True)

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._next_round - time.monotonic())):
                    await stopping.wait()
            if stopping.is_set():
                break
            await self.round()

    async def round(self, *, inline: bool = False) -> None:
        began = time.monotonic()
        # A fixed cadence (a slow round does not push the next one back), and a look right
        # after another replica's lease expires (see _look_again).
        self._next_round = began + self.times.heartbeat
        try:
            async with asyncio.timeout(max(1.0, self.times.heartbeat)):
                found: Round = await self.ledger.run_write(
                    functools.partial(
                        leases.heartbeat,
                        me=self.me,
                        accounts=self.accounts,
                        ttl=self.times.ttl,
                        exclusive=self.exclusive,
                        taking=not self.ctx.stopping.is_set(),
                    )
                )
        except Exception as exc:  # the database is away: keep going until the fence
            log.warning("lease_heartbeat_failed", error=str(exc) or type(exc).__name__)
            await self._fence()
            return
        self._last_ok = began
        self._look_again(found.next_expiry)
        self.leader, self.live = found.leader, found.live
        taken = {t.name for t in found.taken}
        renewed = found.held - taken
        for account in sorted(self.held - renewed):  # expired before we could renew it
            log.warning("lease_lost", account=account)
            await self._drop(account)
        for t in found.taken:
            await self._acquire(t.name, t.since_other, inline=inline)
        for account in found.give_back:
            if account not in self._giving and account in self.held:
                log.info("lease_giving_back", account=account, live_replicas=found.live)
                self._giving[account] = time.monotonic()
                self.ctx.closed.add(account)  # nothing new submitted to it here
        await self._give_back_idle()

    def _look_again(self, next_expiry: float | None) -> None:
        """Take the next round as soon as another replica's lease expires, if that comes before
        the next heartbeat. A lease expires `ttl` after its last renewal and `ttl + heartbeat`
        is the whole lease: waiting for the next heartbeat left no room for the rounds' own
        time, and takeovers measured 3.3-3.4 s under a 3 s lease on a loaded machine."""
        if next_expiry is None:
            return
        # Counted from now, when the round's answer is in: the database read its clock before
        # that, so at the time set here its clock has passed the expiry.
        at = time.monotonic() + next_expiry + EXPIRY_MARGIN
        self._next_round = min(self._next_round, at)

    async def _acquire(self, account: str, since_other: float | None, *, inline: bool) -> None:
        self.held.add(account)
        self._calls.add(account)
        self.ctx.closed.add(account)  # open to new work once reconciled
        if since_other is not None:
            self.takeovers += 1
        log.info("lease_taken", account=account, since_other=since_other)
        if inline:
            await self._recover(account, since_other)
            return
        task = asyncio.create_task(self._recover(account, since_other), name=f"take-{account}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover(self, account: str, since_other: float | None) -> None:
        try:
            await self.hooks.acquired(account, since_other)
        except Exception:
            log.exception("takeover_failed", account=account)
            await self._drop(account)  # the lease expires; we or another try again
            return
        if account in self.held and account not in self._giving:
            self.ctx.closed.discard(account)
            self.ctx.wake_dispatch.set()

    async def _drop(self, account: str) -> None:
        self.held.discard(account)
        self._calls.discard(account)
        self.ctx.closed.discard(account)
        self._giving.pop(account, None)
        await self.hooks.lost(account)

    async def _give_back_idle(self) -> None:
        """Release surplus accounts whose calls here have ended (polls stop at once; a running
        import or a download may hold one for up to `lease`, then it is stopped and resumed by
        the next owner from the ledger)."""
        done = [
            a
            for a, since in self._giving.items()
            if self.hooks.busy(a) == 0 or time.monotonic() - since >= self.times.lease
        ]
        if not done:
            return
        for account in done:
            await self._drop(account)
        try:
            await self.ledger.run_write(
                functools.partial(
                    leases.release, me=self.me, idle={a: self.hooks.idle(a) for a in done}
                )
            )
        except Exception as exc:  # it expires on its own
            log.warning("lease_release_failed", error=str(exc))
        log.info("lease_given_back", accounts=sorted(done))

    async def _fence(self) -> None:
        if self.held and time.monotonic() - self._last_ok >= self.times.fence:
            log.error(
                "ledger_unreachable_stopping_remote_work",
                accounts=sorted(self.held),
                seconds=round(time.monotonic() - self._last_ok, 1),
            )
            for account in sorted(self.held):
                await self._drop(account)
            self.leader = False

    async def stop(self) -> None:
        """A clean stop: every lease back at once, so another replica takes over at its next
        heartbeat instead of after the lease."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            idle = {a: self.hooks.idle(a) for a in self.held}
            await self.ledger.run_write(functools.partial(leases.stopped, me=self.me, idle=idle))
        except Exception as exc:
            log.warning("lease_release_failed", error=str(exc))
        self.held.clear()
        self._calls.clear()
        self.leader = False
