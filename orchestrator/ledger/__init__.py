"""The ledger: the only code that touches the database."""

from orchestrator.ledger.store import Ledger as Ledger

__all__ = ["Ledger"]
