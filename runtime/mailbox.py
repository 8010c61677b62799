"""A real SMTP server on this machine that keeps every message as an `.eml` file.

`signatures up` and `demo` send their confirmation emails here when no SMTP server is
configured, so that the whole double opt-in runs on one machine: open a file, follow its
link. Tests use it as the real server the mail worker talks to: it can answer 4xx or 5xx
(to every recipient or to chosen ones), and be stopped and started again on the same
port, as a mail server that goes away and comes back.

aiosmtpd runs in a thread with its own event loop. Its own log lines name senders and
recipients, so they are switched off: nothing here logs an address.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

from runtime.broker import free_port

logging.getLogger("mail.log").disabled = True  # aiosmtpd's: it logs every address

_ANSWERS = {4: "4.3.0 Try again later", 5: "5.1.1 Mailbox unavailable"}


class _Handler:
    """aiosmtpd's hooks: refuse the recipients it is told to, store the rest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._code: int | None = None
        self._only: frozenset[str] | None = None  # None: every recipient

    def answer(self, code: int | None, recipients: Iterable[str] | None) -> None:
        with self._lock:
            self._code = code
            self._only = None if recipients is None else frozenset(r.lower() for r in recipients)

    def _refusal(self, address: str) -> str | None:
        with self._lock:
            if self._code is None:
                return None
            if self._only is not None and address.lower() not in self._only:
                return None
            return f"{self._code} {_ANSWERS[self._code // 100]}"

    async def handle_RCPT(  # aiosmtpd's hook names
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        refusal = self._refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd's hook names
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode()
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        partial = self.directory / f".{name}.partial"
        try:
            partial.write_bytes(content)
            partial.rename(self.directory / name)  # a reader never sees half a message
        except OSError:
            return "451 4.3.0 Cannot store the message now"
        return "250 OK: stored"


class Mailbox:
    """The local SMTP server: `start()`, `stop()`, `start()` again keeps the same port."""

    def __init__(self, directory: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = directory
        self.host = host
        self.port = port or free_port()
        self._handler = _Handler(directory)
        self._controller: Controller | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        controller = Controller(self._handler, hostname=self.host, port=self.port)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Close the port: clients are refused until `start()`; stored messages stay."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def answer(self, code: int | None, recipients: Iterable[str] | None = None) -> None:
        """Refuse these recipients (every one when None) with `code`, a 4xx or 5xx, at RCPT
        from now on; `answer(None)` accepts everyone again."""
        if code is not None and code // 100 not in _ANSWERS:
            raise ValueError("the code must be a 4xx or 5xx")
        self._handler.answer(code, recipients)

    def paths(self) -> list[Path]:
        """The stored messages, oldest first."""
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        parser = BytesParser(policy=policy.default)
        found = []
        for path in self.paths():
            message = parser.parsebytes(path.read_bytes())
            assert isinstance(message, EmailMessage)  # noqa: S101 - policy.default makes them
            found.append(message)
        return found

    def __enter__(self) -> Mailbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
