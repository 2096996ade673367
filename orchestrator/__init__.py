"""orchestrator: bulk data jobs on SaaS APIs, with a ledger that never loses one."""

__version__ = "0.1.0"
