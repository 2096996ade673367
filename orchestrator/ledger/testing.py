"""Throwaway PostgreSQL databases for the test suite and the benchmarks (the daemon never
imports this module). Needs psycopg, which the `dev` and `postgres` extras install.

The server: `$ORCHESTRATOR_TEST_POSTGRES` (a libpq conninfo, e.g. "host=db user=me"), else
127.0.0.1:5432 as `postgres`, then as `root` (trust authentication, as on our machines).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "ORCHESTRATOR_TEST_POSTGRES"
_DEFAULTS = (
    "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
    "host=127.0.0.1 port=5432 user=root dbname=postgres",
)


class NoServer(Exception):
    """No PostgreSQL server answered (or none let us create a database)."""


def admin_conninfo() -> str:
    """The conninfo of the first server that accepts a connection, as a superuser-ish role."""
    import psycopg

    candidates = [os.environ[ENV]] if os.environ.get(ENV) else list(_DEFAULTS)
    errors = []
    for conninfo in candidates:
        try:
            with psycopg.connect(conninfo, connect_timeout=3, autocommit=True):
                return conninfo
        except psycopg.Error as exc:
            errors.append(f"{conninfo!r}: {str(exc).strip().splitlines()[0]}")
    raise NoServer("no PostgreSQL server answered: " + "; ".join(errors))


def _url(conninfo: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(conninfo)
    auth = str(p.get("user", ""))
    if p.get("password"):
        auth += f":{p['password']}"
    return f"postgresql://{auth}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{dbname}"


@contextmanager
def scratch_database(conninfo: str, prefix: str = "orch_test") -> Iterator[str]:
    """Create a uniquely named empty database; yield its URL (`postgresql://…`, which the ledger
    reads as asyncpg; swap the scheme for `postgresql+psycopg://`); drop it afterwards."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(5)}"
    with psycopg.connect(conninfo, connect_timeout=3, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _url(conninfo, name)
    finally:
        with psycopg.connect(conninfo, connect_timeout=3, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
