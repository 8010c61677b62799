"""structlog, configured once per process: JSON when piped, readable on a terminal.

Our own lines go through structlog's fast native loggers (one canonical line per request
and per batch is on the hot path); aiokafka's, asyncpg's and uvicorn's stdlib logging is
rendered by the same processors, so every line has one format. Nothing here ever receives
a signer's name, email or postcode: callers log ids, counts, reason codes and durations.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO, cast

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip
_configured = False


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written (it can be swapped after start-up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    global _configured  # noqa: PLW0603 - logging is process-global by nature
    if _configured:
        return
    _configured = True
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if as_json
        # Plain tracebacks: rich's would print local variables, and those can be PII.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=structlog.WriteLoggerFactory(cast(TextIO, _CurrentStderr())),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # aiokafka is chatty at INFO about group membership; keep its warnings.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # `up` polls /readyz with httpx: a line per poll would drown what matters.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    # uvicorn's access log would duplicate our canonical request line.
    logging.getLogger("uvicorn.access").disabled = True


def _json_line(event: structlog.types.EventDict, **options: Any) -> str:
    """orjson: about three times as fast as the standard library on a request's line.
    What it refuses (an integer past 64 bits, say) goes to the standard library."""
    try:
        return orjson.dumps(event, default=options.get("default")).decode()
    except TypeError:
        return json.dumps(event, **options)


def _identity(
    _logger: object, _name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event_dict


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger: safe at import time, configured on first use."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
