"""Kafka security settings: every combination maps to exactly the clients' arguments, or
is refused at start with one line per variable; the SASL password is never shown."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from runtime.kafka import make_producer, security_options
from runtime.settings import ConfigError, Settings, load_settings, settings_env
from runtime.topics import topic_specs
from tests.processes import signatures
from tests.tls import Authority, Issued

PASSWORD = "pa55-Word-that-must-never-show"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = (None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
KAFKA_VARIABLES = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "SIGNATURES_REPLICATION_FACTOR",
    "SIGNATURES_MIN_INSYNC_REPLICAS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KAFKA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Issued]:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority.create(directory)
    return ca, ca.issue(directory, "client", ("signatures-client",), server=False)


def env(monkeypatch: pytest.MonkeyPatch, **values: str | Path) -> Settings:
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))
    return load_settings()


def refused(monkeypatch: pytest.MonkeyPatch, **values: str | Path) -> list[str]:
    """The lines of the configuration error, each checked to name its variable first."""
    with pytest.raises(ConfigError) as caught:
        env(monkeypatch, **values)
    text = str(caught.value)
    assert PASSWORD not in text
    return text.splitlines()


def ca_subjects(context: ssl.SSLContext) -> list[Any]:
    return [cert["subject"] for cert in context.get_ca_certs()]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_every_protocol_and_mechanism(
    monkeypatch: pytest.MonkeyPatch,
    pki: tuple[Authority, Issued],
    protocol: str,
    mechanism: str | None,
) -> None:
    ca, _ = pki
    values: dict[str, str | Path] = {"KAFKA_SECURITY_PROTOCOL": protocol}
    if mechanism is not None:
        values |= {
            "KAFKA_SASL_MECHANISM": mechanism,
            "KAFKA_SASL_USERNAME": "api-key-id",
            "KAFKA_SASL_PASSWORD": PASSWORD,
        }
    if protocol in ("SSL", "SASL_SSL"):
        values["KAFKA_SSL_CAFILE"] = ca.cert
    sasl = protocol.startswith("SASL_")

    if sasl and mechanism is None:  # a SASL protocol needs its mechanism and credentials
        assert refused(monkeypatch, **values) == [
            f"KAFKA_SASL_MECHANISM: Value error, not set (KAFKA_SECURITY_PROTOCOL is "
            f"{protocol}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
            f"KAFKA_SASL_USERNAME: Value error, not set (KAFKA_SECURITY_PROTOCOL is "
            f"{protocol}: the SASL user name)",
            f"KAFKA_SASL_PASSWORD: Value error, not set (KAFKA_SECURITY_PROTOCOL is "
            f"{protocol}: the SASL password)",
        ]
        return
    if not sasl and mechanism is not None:  # credentials that would silently go unused
        why = (
            f"Value error, set, but KAFKA_SECURITY_PROTOCOL is {protocol}, which does not "
            "use SASL (SASL_PLAINTEXT or SASL_SSL do)"
        )
        assert refused(monkeypatch, **values) == [
            f"KAFKA_SASL_MECHANISM: {why}",
            f"KAFKA_SASL_USERNAME: {why}",
            f"KAFKA_SASL_PASSWORD: {why}",
        ]
        return

    options = security_options(env(monkeypatch, **values))
    context = options.pop("ssl_context", None)
    expected: dict[str, Any] = {"security_protocol": protocol}
    if sasl:
        expected |= {
            "sasl_mechanism": mechanism,
            "sasl_plain_username": "api-key-id",
            "sasl_plain_password": PASSWORD,
        }
    assert options == expected
    if protocol in ("SSL", "SASL_SSL"):
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert ca_subjects(context) == [((("commonName", ca.name),),)]
    else:
        assert context is None


def test_child_processes_connect_the_same_way(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Authority, Issued]
) -> None:
    """`up` starts the workers with the settings as environment variables."""
    ca, client = pki
    s = env(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD=PASSWORD,
        KAFKA_SSL_CAFILE=ca.cert,
        KAFKA_SSL_CERTFILE=client.cert,
        KAFKA_SSL_KEYFILE=client.key,
        SIGNATURES_REPLICATION_FACTOR="3",
    )
    for name in KAFKA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    child = env(monkeypatch, **settings_env(s))
    fields = [name.lower().removeprefix("signatures_") for name in KAFKA_VARIABLES]
    assert {f: getattr(child, f) for f in fields} == {f: getattr(s, f) for f in fields}
    assert child.kafka_sasl_password is not None
    assert child.kafka_sasl_password.get_secret_value() == PASSWORD
    assert child.min_isr() == 2


def test_tls_without_a_ca_file_trusts_the_system_cas(monkeypatch: pytest.MonkeyPatch) -> None:
    """A managed service's certificates are publicly signed: no CA file to give."""
    options = security_options(
        env(
            monkeypatch,
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_MECHANISM="scram-sha-512",  # any case
            KAFKA_SASL_USERNAME="u",
            KAFKA_SASL_PASSWORD=PASSWORD,
        )
    )
    context = options["ssl_context"]
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == len(ssl.create_default_context().get_ca_certs())


def test_client_certificate(monkeypatch: pytest.MonkeyPatch, pki: tuple[Authority, Issued]) -> None:
    ca, client = pki
    s = env(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CAFILE=ca.cert,
        KAFKA_SSL_CERTFILE=client.cert,
        KAFKA_SSL_KEYFILE=client.key,
    )
    context = security_options(s)["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert security_options(s)["ssl_context"] is context  # loaded once, shared by clients


def test_refused_tls_files(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Authority, Issued], tmp_path: Path
) -> None:
    ca, client = pki
    assert refused(
        monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=tmp_path / "no"
    ) == ["KAFKA_SSL_CAFILE: Path does not point to a file"]
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    assert refused(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=not_pem) == [
        "KAFKA_SSL_CAFILE: Value error, not a PEM file of CA certificates"
    ]
    monkeypatch.delenv("KAFKA_SSL_CAFILE")
    assert refused(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTFILE=client.cert) == [
        "KAFKA_SSL_KEYFILE: Value error, not set (KAFKA_SSL_CERTFILE is: the certificate's key)"
    ]
    monkeypatch.delenv("KAFKA_SSL_CERTFILE")
    assert refused(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_KEYFILE=client.key) == [
        "KAFKA_SSL_KEYFILE: Value error, set without KAFKA_SSL_CERTFILE (the key's certificate)"
    ]
    other = ca.issue(tmp_path, "other", server=False)
    assert refused(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CERTFILE=client.cert,
        KAFKA_SSL_KEYFILE=other.key,
    ) == [
        "KAFKA_SSL_KEYFILE: Value error, not the unencrypted PEM key of the PEM certificate in "
        "KAFKA_SSL_CERTFILE"
    ]
    # an encrypted key is refused at start, never prompted for
    key = serialization.load_pem_private_key(client.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key password"),
        )
    )
    assert refused(monkeypatch, KAFKA_SSL_KEYFILE=encrypted) == [
        "KAFKA_SSL_KEYFILE: Value error, not the unencrypted PEM key of the PEM certificate in "
        "KAFKA_SSL_CERTFILE"
    ]
    for protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):  # TLS files without TLS
        monkeypatch.delenv("KAFKA_SSL_CERTFILE", raising=False)
        monkeypatch.delenv("KAFKA_SSL_KEYFILE", raising=False)
        lines = refused(
            monkeypatch,
            KAFKA_SECURITY_PROTOCOL=protocol,
            KAFKA_SASL_MECHANISM="PLAIN" if protocol == "SASL_PLAINTEXT" else "",
            KAFKA_SASL_USERNAME="u" if protocol == "SASL_PLAINTEXT" else "",
            KAFKA_SASL_PASSWORD=PASSWORD if protocol == "SASL_PLAINTEXT" else "",
            KAFKA_SSL_CAFILE=ca.cert,
        )
        assert lines == [
            f"KAFKA_SSL_CAFILE: Value error, set, but KAFKA_SECURITY_PROTOCOL is {protocol}, "
            "which does not use TLS (SSL or SASL_SSL do)"
        ]


def test_unknown_protocol_or_mechanism(monkeypatch: pytest.MonkeyPatch) -> None:
    assert refused(monkeypatch, KAFKA_SECURITY_PROTOCOL="TLS") == [
        "KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or "
        "'SASL_SSL'"
    ]
    lines = refused(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="GSSAPI",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    assert lines == [
        "KAFKA_SASL_MECHANISM: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"
    ]


def test_empty_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose passes a variable it was not given as an empty string."""
    s = env(monkeypatch, **dict.fromkeys(KAFKA_VARIABLES[:7], ""))
    assert security_options(s) == {"security_protocol": "PLAINTEXT"}


async def test_the_password_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = env(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD=PASSWORD,
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
    )
    assert PASSWORD not in repr(s) and PASSWORD not in str(s)
    assert PASSWORD not in s.model_dump_json()
    with caplog.at_level(logging.DEBUG):
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **security_options(s))
        await producer.stop()
        logging.getLogger("test").info("settings %s %r", s, s)
    assert "settings" in caplog.text and PASSWORD not in caplog.text
    # a refused password is not echoed either, however the error is printed
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "KAFKA_SASL_PASSWORD" in str(caught.value) or "kafka_sasl_password" in str(caught.value)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)


# --- replication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "min_isr", "expected"),
    [("", "", 1), ("1", "", 1), ("2", "", 1), ("3", "", 2), ("5", "", 4), ("3", "3", 3)],
)
def test_topics_get_replicas_and_min_insync_replicas(
    monkeypatch: pytest.MonkeyPatch, replicas: str, min_isr: str, expected: int
) -> None:
    values = {"SIGNATURES_REPLICATION_FACTOR": replicas, "SIGNATURES_MIN_INSYNC_REPLICAS": min_isr}
    s = env(monkeypatch, **{name: value for name, value in values.items() if value})
    specs = topic_specs(s)
    assert len(specs) == 4
    for spec in specs:
        assert spec.replication_factor == int(replicas or 1)
        assert spec.topic_configs["min.insync.replicas"] == str(expected)
    by_name = {spec.name: spec.topic_configs for spec in specs}
    assert by_name[s.topic_totals]["cleanup.policy"] == "compact"  # kept beside it
    assert "retention.ms" in by_name[s.topic_submitted]


def test_min_insync_replicas_above_the_replicas_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert refused(
        monkeypatch, SIGNATURES_REPLICATION_FACTOR="3", SIGNATURES_MIN_INSYNC_REPLICAS="4"
    ) == [
        "SIGNATURES_MIN_INSYNC_REPLICAS: Value error, 4 is more than "
        "SIGNATURES_REPLICATION_FACTOR (3): no write could ever succeed"
    ]
    assert refused(monkeypatch, SIGNATURES_REPLICATION_FACTOR="0") == [
        "SIGNATURES_REPLICATION_FACTOR: Input should be greater than or equal to 1"
    ]


@pytest.mark.parametrize("idempotence", [False, True])
async def test_producers_wait_for_every_in_sync_replica(
    monkeypatch: pytest.MonkeyPatch, idempotence: bool
) -> None:
    s = env(
        monkeypatch,
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        SIGNATURES_KAFKA_ENABLE_IDEMPOTENCE=str(idempotence).lower(),
    )
    producer = make_producer(s)
    try:
        assert producer._sender._acks == -1  # acks="all", as aiokafka stores it
    finally:
        await producer.stop()


@pytest.mark.slow
def test_up_refuses_tls_or_sasl_with_the_embedded_broker(tmp_path: Path) -> None:
    """tansu speaks PLAINTEXT only: `up` without KAFKA_BOOTSTRAP_SERVERS says so at once
    instead of starting everything and failing to connect."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in KAFKA_VARIABLES and name != "KAFKA_BOOTSTRAP_SERVERS"
    }
    env |= {"KAFKA_SECURITY_PROTOCOL": "SSL", "SIGNATURES_STATE_DIR": str(tmp_path)}
    done = signatures("up", "--port", "0", env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "configuration error: KAFKA_SECURITY_PROTOCOL: SSL, but KAFKA_BOOTSTRAP_SERVERS is "
        "not set (the embedded broker speaks PLAINTEXT only)"
    ]
