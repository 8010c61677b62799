"""The error policy of the consume loop, by class.

- Transient (broker or database unreachable, deadlock, serialisation failure): back off and
  retry the same batch; offsets stay uncommitted, so nothing is lost.
- Invalid payloads never raise: handlers turn them into dead letters.
- Anything else is a bug: it propagates and the worker fails loudly.
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka.errors import KafkaError


class TransientError(Exception):
    """Raised by handlers for a condition that retrying the same batch can fix."""


TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    KafkaError,
    OSError,  # connection refused / reset, to either service
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # connection closed underneath a query
    # The client's protocol state after the server dropped the connection mid-operation
    # (raised by the pool's reset on release, which then discards that connection).
    asyncpg.InternalClientError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,  # statement_timeout while the database is overloaded
    asyncpg.TooManyConnectionsError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


def service_of(exc: BaseException) -> str:
    """Which service a transient error came from, for metrics: database, broker or other."""
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return "database"
    if isinstance(exc, KafkaError):
        return "broker"
    return "other"
