"""structlog, configured once per process: JSON when piped, readable on a terminal.

Every line, including aiokafka's and uvicorn's stdlib logging, goes through the same
processors. Nothing here ever receives a signer's name, email or postcode: callers log
ids, counts, reason codes and durations only.
"""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    global _configured  # noqa: PLW0603 - logging is process-global by nature
    if _configured:
        return
    _configured = True
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        # Plain tracebacks: rich's would print local variables, and those can be PII.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
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
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about group membership; keep its warnings.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # One line per outgoing HTTP request of the demo would drown its progress bar.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    # uvicorn's access log would duplicate our canonical request line.
    logging.getLogger("uvicorn.access").disabled = True


def _identity(
    _logger: object, _name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
