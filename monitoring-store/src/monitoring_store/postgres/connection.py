"""The PostgreSQL store's connection pool, shared by every resource module."""

from __future__ import annotations

import re

import asyncpg
import msgspec

#: Rows per write statement; bounds the size of one statement's arrays.
WRITE_CHUNK = 50_000


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _dsn(url: str) -> str:
    """asyncpg wants ``postgresql://``; accept SQLAlchemy-style ``postgresql+asyncpg://`` too."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def _chunks(n: int, size: int | None = None) -> list[slice]:
    size = size or WRITE_CHUNK
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class PgConnection:
    """An asyncpg pool, opened by :meth:`PostgresStore.start`."""

    def __init__(
        self,
        url: str,
        *,
        min_pool: int = 1,
        max_pool: int = 10,
        schema: str | None = None,
        migrate: bool = True,
    ) -> None:
        """``schema`` keeps the store's tables in their own PostgreSQL schema (created by the
        first migration), e.g. to share a database with other services or to isolate test
        runs. ``migrate=False``: ``start()`` refuses a schema that is not at the newest
        migration instead of upgrading it."""
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self._url = url
        self._migrate = migrate
        self._dsn = _dsn(url)
        self._min_pool = min_pool
        self._max_pool = max_pool
        self._schema = schema
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgresStore.start() has not been called")
        return self._pool

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "jsonb",
            encoder=lambda v: msgspec.json.encode(v).decode(),
            decoder=msgspec.json.decode,
            schema="pg_catalog",
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
