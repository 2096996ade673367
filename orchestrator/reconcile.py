"""Pure rules of reconciliation: which remote job, if any, a submission with a lost answer made.

A remote job is adopted only when it provably belongs to the submission. Where the provider
echoes no identifier of ours, the proof comes from the design: the dispatcher never has two
submissions of one *ambiguity class* (what the provider's listing cannot tell apart, e.g. one
Clari export module) unresolved at once, so one unowned remote job of that class created after
the submission began can only be its. Everything else is left to the operator, never guessed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

SHOWN = 5  # candidate ids named in a message


@dataclass(frozen=True, kw_only=True, slots=True)
class Lookup:
    """What reconciliation learned of one submission whose outcome was unknown.

    `remote_id`: the remote job it provably created (adopt it). `ambiguous`: why that cannot be
    told (the job waits for the operator: `jobs adopt` / `jobs resubmit`). Neither: it provably
    created nothing (submit again)."""

    remote_id: str | None = None
    ambiguous: str | None = None


NOT_CREATED = Lookup()


@dataclass(frozen=True, kw_only=True, slots=True)
class Lost:
    """A submission whose outcome is unknown: its class and when it began (ms, less skew)."""

    job_id: int
    cls: str
    since_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """A remote job as the provider lists it: its class and when it was created (ms)."""

    remote_id: str
    cls: str
    created_ms: int


def _ids(items: Sequence[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def decide(
    lost: Sequence[Lost], candidates: Sequence[Candidate], owned: set[str]
) -> dict[int, Lookup]:
    """For every lost submission: adopt, not created, or ambiguous (with the reason).

    Per class: no unowned remote job created since the earliest of its submissions began →
    none of them created anything. One submission and exactly one such remote job → that one.
    Anything else (several candidates, or several unresolved submissions of one class, as an
    older ledger may hold) → ambiguous for each of them.
    """
    groups: dict[str, list[Lost]] = defaultdict(list)
    for item in lost:
        groups[item.cls].append(item)
    out: dict[int, Lookup] = {}
    for cls, group in groups.items():
        since = min(item.since_ms for item in group)
        fits = sorted(
            (c for c in candidates if c.cls == cls and c.remote_id not in owned),
            key=lambda c: (c.created_ms, c.remote_id),
        )
        fits = [c for c in fits if c.created_ms >= since]
        ids = [c.remote_id for c in fits]
        if not fits:
            out.update((item.job_id, NOT_CREATED) for item in group)
        elif len(group) == 1:
            item = group[0]
            out[item.job_id] = (
                Lookup(remote_id=fits[0].remote_id)
                if len(fits) == 1
                else Lookup(
                    ambiguous=f"ambiguous: {len(fits)} candidate remote jobs of {cls} "
                    f"({_ids(ids)}) for one submission"
                )
            )
        else:
            jobs = ", ".join(str(item.job_id) for item in sorted(group, key=lambda i: i.job_id))
            reason = (
                f"ambiguous: {len(group)} submissions of {cls} unresolved at once (jobs {jobs}), "
                f"{len(fits)} candidate remote jobs ({_ids(ids)})"
            )
            out.update((item.job_id, Lookup(ambiguous=reason)) for item in group)
    return out


def operator_hint(job_id: int) -> str:
    return (
        f"; decide with `orchestrator jobs adopt {job_id} REMOTE_ID` "
        f"or `orchestrator jobs resubmit {job_id}`"
    )
