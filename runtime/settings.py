"""Configuration, read once at the entry point from the environment and passed down."""

from __future__ import annotations

import os
import re
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.abuse_settings import (
    COMMON_DOMAINS,
    DomainsText,
    DurationText,
    NetworksText,
    RateLimitsText,
    RateWindowText,
    StorageUrl,
)
from runtime.pii import Keyring, new_master_key, parse_master_key

PREFIX = "SIGNATURES_"
# A host name or IPv4 address, "*.example.org" for its subdomains, or "*" for any host.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"\*|(\*\.)?{_LABEL}(\.{_LABEL})*")


# The kinds of service, each with its database role (schemas/migrations/0011_roles.sql).
Service = Literal["api", "worker", "operator"]

# How the Kafka clients reach the brokers (Kafka's own names; runtime/kafka.py maps them).
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS = ("SSL", "SASL_SSL")


class ConfigError(Exception):
    """A configuration problem, already phrased as one line per variable."""


class Settings(BaseSettings):
    """Everything a process of the pipeline can be told, with the environment variable names.

    `KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` keep their conventional names; the rest
    live under the `SIGNATURES_` prefix.
    """

    # hide_input_in_errors: a rejected value (a password among them) is never echoed
    model_config = SettingsConfigDict(
        env_prefix=PREFIX, frozen=True, extra="ignore", hide_input_in_errors=True
    )

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="host:port[,host:port]; unset means `up`/`demo` start the embedded broker",
    )
    # Security of the Kafka connections, for every producer, consumer and admin client
    # (runtime/kafka.py `security_options`). Declared in this order: each one's check reads
    # the ones above it.
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol"),
        validate_default=True,
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (managed services: SASL_SSL)",
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism"),
        validate_default=True,
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; with the SASL protocols only",
    )
    kafka_sasl_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "kafka_sasl_username"),
        validate_default=True,
        description="with the SASL protocols only (an API key's id)",
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "kafka_sasl_password"),
        validate_default=True,
        description="with the SASL protocols only (an API key's secret)",
    )
    kafka_ssl_cafile: FilePath | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_CAFILE", "kafka_ssl_cafile"),
        validate_default=True,
        description="PEM file of the CAs that sign the brokers' certificates; unset: the system's",
    )
    kafka_ssl_certfile: FilePath | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_CERTFILE", "kafka_ssl_certfile"),
        validate_default=True,
        description="PEM client certificate (mutual TLS), with its key",
    )
    kafka_ssl_keyfile: FilePath | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_KEYFILE", "kafka_ssl_keyfile"),
        validate_default=True,
        description="PEM private key of the client certificate, unencrypted",
    )
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/signatures",
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="PostgreSQL connection URL",
    )
    # Least privilege (README "Database roles"): each kind of service may connect as its own
    # login user, a member of the group role the migrations grant (0011_roles.sql).
    api_database_url: str | None = Field(
        default=None,
        description="The API's connection URL (a member of signatures_api); unset: DATABASE_URL",
    )
    worker_database_url: str | None = Field(
        default=None,
        description="The persist, count and mail workers' and retention's URL (a member of "
        "signatures_worker); unset: DATABASE_URL",
    )
    operator_database_url: str | None = Field(
        default=None,
        description="The operators' commands' URL (a member of signatures_operator); "
        "unset: DATABASE_URL",
    )
    dedupe_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of the dedupe hash; at least 32 characters; must never change",
    )
    # Encryption at rest of signers' names, email and postcode (runtime/pii.py).
    master_key: SecretStr | None = Field(
        default=None,
        description="32 bytes in base64 that wrap the data keys; unset: the key file "
        "`master-key` in the state directory, which `up` generates",
    )
    previous_master_key: SecretStr | None = Field(
        default=None,
        description="While a rotation is under way: the master key being replaced (unwraps "
        "only; `signatures keys rotate` rewraps what it wrapped)",
    )
    topic_submitted: str = "signatures.submitted"
    topic_rejected: str = "signatures.rejected"
    topic_accepted: str = "signatures.accepted"
    topic_totals: str = "signatures.totals"
    partitions: Annotated[int, Field(ge=1, le=1024)] = 6
    # Durability of the topics the pipeline creates (runtime/topics.py); producers wait for
    # every in-sync replica (acks=all). min.insync.replicas unset: 1 when the replication
    # factor is 1, else one less than it (3 -> 2: one broker may be down, none lost).
    replication_factor: Annotated[int, Field(ge=1, le=32_767)] = 1
    min_insync_replicas: Annotated[int, Field(ge=1, le=32_767)] | None = None
    persist_group: str = "signatures-persist"
    count_group: str = "signatures-count"
    mail_group: str = "signatures-mail"
    batch_max_records: Annotated[int, Field(ge=1, le=100_000)] = 5_000
    batch_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    max_record_bytes: Annotated[int, Field(ge=256, le=10_000_000)] = 16_384
    # HTTP bodies: one signature (JSON or form) is a few hundred bytes; a batch is its lines.
    max_signature_bytes: Annotated[int, Field(ge=1024, le=1_000_000)] = 8_192
    max_batch_bytes: Annotated[int, Field(ge=1024, le=100_000_000)] = 8_000_000
    producer_linger_ms: Annotated[int, Field(ge=0, le=1_000)] = 5
    kafka_enable_idempotence: bool = False
    session_timeout_ms: Annotated[int, Field(ge=1_000, le=300_000)] = 10_000
    heartbeat_interval_ms: Annotated[int, Field(ge=100, le=60_000)] = 3_000
    shutdown_grace_s: Annotated[float, Field(gt=0, le=600)] = 20.0
    totals_poll_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0  # every process; 0: any free port
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    state_dir: Path = Path.home() / ".local" / "state" / "signatures"
    # Public totals: countries with fewer signatures are merged into "other".
    public_min_count: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    # Confirmation by email (double opt-in) and the mail worker.
    public_url: str | None = Field(
        default=None, description="Where signers reach the site: links in emails start here"
    )
    smtp_host: str | None = None
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["off", "starttls", "tls"] = "starttls"
    smtp_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    mail_from: str | None = None
    confirmation_ttl_hours: Annotated[float, Field(gt=0, le=24 * 365)] = 7 * 24
    reminder_after_hours: Annotated[float, Field(gt=0, le=24 * 365)] = 48
    mail_poll_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    mail_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    # The HTTP edge of the API (ingest/server.py, ingest/middleware.py): see the README.
    http_max_connections: Annotated[int, Field(ge=16, le=1_000_000)] = 8_192
    http_header_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    http_body_timeout_s: Annotated[float, Field(gt=0, le=3_600)] = 15.0
    http_keep_alive_s: Annotated[int, Field(ge=1, le=300)] = 5
    sse_max_streams: Annotated[int, Field(ge=1, le=1_000_000)] = 4_096
    allowed_hosts: str | None = Field(
        default=None,
        description="Comma-separated Host names the API answers; default: the public "
        "URL's host, localhost and 127.0.0.1",
    )
    docs: bool = False  # /docs and /openapi.json
    db_acquire_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # Abuse resistance (runtime/abuse_settings.py; README "Abuse policy"): rate limits at
    # the API, in the `limits` notation, and silent flags held for an operator's review.
    rate_limits: bool = True  # off: trusted load (the bench, the fault tests)
    rate_limit_client: RateLimitsText = "20/minute;200/hour"  # per address (IPv6: per /64)
    rate_limit_key: RateLimitsText = "600/minute"  # per partner key (a batch is one request)
    rate_limit_campaign: RateLimitsText = "5000/second"  # per campaign, per API process
    rate_limit_storage: StorageUrl = "memory://"  # or redis://host:6379: shared by processes
    trusted_proxies: NetworksText = ""  # X-Forwarded-For is read only from these peers
    flags: bool = True  # off: trusted load (the bench, the fault tests)
    flag_prefix_rate: RateWindowText = "30/10minutes"  # per campaign and /24 or /48
    flag_domain_rate: RateWindowText = "100/10minutes"  # per campaign and email domain
    flag_exempt_domains: DomainsText = COMMON_DOMAINS  # never flagged for their rate
    form_min_seconds: Annotated[float, Field(ge=0, le=600)] = 3.0  # the page's form, filled
    # Signers' data (README "Signers' data"): how long the topics that carry personal data
    # keep it (Kafka's retention.ms, set when the topics are created), and how often `up`
    # anonymises the closed campaigns past their retention.
    pii_topic_retention: DurationText = "7d"
    retention_interval: DurationText = "1h"

    @field_validator(
        "api_database_url",
        "worker_database_url",
        "operator_database_url",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "min_insync_replicas",
        mode="before",
    )
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value  # compose passes unset variables as ""

    @field_validator("kafka_security_protocol", mode="before")
    @classmethod
    def _protocol_name(cls, value: object) -> object:
        if value == "":
            return "PLAINTEXT"  # compose passes unset variables as ""
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("kafka_sasl_mechanism", mode="before")
    @classmethod
    def _mechanism_name(cls, value: object) -> object:
        return value.strip().upper() or None if isinstance(value, str) else value

    @field_validator("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
    @classmethod
    def _sasl_only_with_sasl(cls, value: object, info: ValidationInfo) -> object:
        protocol = info.data.get("kafka_security_protocol")
        if protocol is None:
            return value  # the protocol itself is wrong, and reported
        if protocol in _SASL and value is None:
            wanted = {
                "kafka_sasl_mechanism": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                "kafka_sasl_username": "the SASL user name",
                "kafka_sasl_password": "the SASL password",
            }[str(info.field_name)]
            raise ValueError(f"not set (KAFKA_SECURITY_PROTOCOL is {protocol}: {wanted})")
        if protocol not in _SASL and value is not None:
            raise ValueError(
                f"set, but KAFKA_SECURITY_PROTOCOL is {protocol}, which does not use SASL "
                "(SASL_PLAINTEXT or SASL_SSL do)"
            )
        return value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _tls_files(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        protocol = info.data.get("kafka_security_protocol")
        if value is not None and protocol is not None and protocol not in _TLS:
            raise ValueError(
                f"set, but KAFKA_SECURITY_PROTOCOL is {protocol}, which does not use TLS "
                "(SSL or SASL_SSL do)"
            )
        if info.field_name == "kafka_ssl_cafile" and value is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=value)
            except (ssl.SSLError, ValueError):
                raise ValueError("not a PEM file of CA certificates") from None
        if info.field_name == "kafka_ssl_keyfile":
            if "kafka_ssl_certfile" not in info.data:
                return value  # the certificate file is wrong, and reported
            certfile = info.data["kafka_ssl_certfile"]
            if certfile is not None and value is None:
                raise ValueError("not set (KAFKA_SSL_CERTFILE is: the certificate's key)")
            if certfile is None and value is not None:
                raise ValueError("set without KAFKA_SSL_CERTFILE (the key's certificate)")
            if certfile is not None:
                try:  # a password callback: an encrypted key fails here, never prompts
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.load_cert_chain(certfile, value, _no_password)
                except ssl.SSLError:
                    raise ValueError(
                        "not the unencrypted PEM key of the PEM certificate in KAFKA_SSL_CERTFILE"
                    ) from None
        return value

    @field_validator("min_insync_replicas")
    @classmethod
    def _at_most_replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        replicas = info.data.get("replication_factor")
        if value is not None and replicas is not None and value > replicas:
            raise ValueError(
                f"{value} is more than SIGNATURES_REPLICATION_FACTOR ({replicas}): "
                "no write could ever succeed"
            )
        return value

    def require_plaintext_for_embedded_broker(self) -> None:
        """The embedded broker speaks PLAINTEXT only (tansu cannot serve TLS or take SASL
        users): with other Kafka security settings, KAFKA_BOOTSTRAP_SERVERS must name the
        cluster they are meant for, rather than the clients failing to reach a local one."""
        if self.kafka_bootstrap_servers is None and self.kafka_security_protocol != "PLAINTEXT":
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL: {self.kafka_security_protocol}, but "
                "KAFKA_BOOTSTRAP_SERVERS is not set (the embedded broker speaks PLAINTEXT only)"
            )

    def min_isr(self) -> int:
        """min.insync.replicas of the topics: as set, or 1 for one replica, else one less
        than the replication factor."""
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return max(1, self.replication_factor - 1)

    @field_validator(
        "database_url", "api_database_url", "worker_database_url", "operator_database_url"
    )
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value

    def database_url_for(self, service: Service) -> str:
        """The URL a kind of service connects with: its own, or DATABASE_URL (the owner)."""
        own = {
            "api": self.api_database_url,
            "worker": self.worker_database_url,
            "operator": self.operator_database_url,
        }[service]
        return own or self.database_url

    @field_validator("dedupe_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("master_key", "previous_master_key")
    @classmethod
    def _master_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_master_key(value.get_secret_value())
        return value

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value is not None else None

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: str | None) -> str | None:
        if value is None:
            return None
        hosts = [host.strip().lower() for host in value.split(",") if host.strip()]
        if not hosts:
            raise ValueError("must name at least one host")
        for host in hosts:
            if not _HOST_NAME.fullmatch(host):
                raise ValueError(f"not a host name: {host[:64]!r} (names, *.domain or *)")
        return ",".join(hosts)

    def trusted_hosts(self) -> list[str]:
        """The Host names the API answers to: SIGNATURES_ALLOWED_HOSTS, or by default the
        public URL's host, localhost and 127.0.0.1."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts.split(",")
        hosts = ["localhost", "127.0.0.1"]
        public = urlsplit(self.public_url).hostname if self.public_url else None
        return [public, *hosts] if public and public not in hosts else hosts

    def require_mail(self) -> tuple[str, str, str]:
        """SMTP host, sender address and public URL, or a ConfigError naming the variable."""
        missing = [
            f"{PREFIX}{name}: not set ({why})"
            for name, value, why in (
                ("SMTP_HOST", self.smtp_host, "the SMTP server that sends confirmation emails"),
                ("MAIL_FROM", self.mail_from, "the sender address of confirmation emails"),
                ("PUBLIC_URL", self.public_url, "where the links in emails point"),
            )
            if not value
        ]
        if self.smtp_username and self.smtp_password is None:
            missing.append(f"{PREFIX}SMTP_PASSWORD: not set (SMTP_USERNAME is)")
        if missing:
            raise ConfigError("\n".join(missing))
        return str(self.smtp_host), str(self.mail_from), str(self.public_url)

    def require_dedupe_secret(self) -> bytes:
        """The dedupe HMAC key, or a ConfigError naming the variable."""
        if self.dedupe_secret is None:
            raise ConfigError(
                f"{PREFIX}DEDUPE_SECRET: not set (generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return self.dedupe_secret.get_secret_value().encode()

    @property
    def master_key_file(self) -> Path:
        return self.state_dir / "master-key"

    def require_master_keys(self) -> Keyring:
        """The master key (and the previous one, during a rotation), or a ConfigError.

        SIGNATURES_MASTER_KEY when set (production: never a file then); otherwise the key
        file that `up` generated in the state directory of this machine.
        """
        previous = (
            None
            if self.previous_master_key is None
            else parse_master_key(self.previous_master_key.get_secret_value())
        )
        if self.master_key is not None:
            return Keyring(parse_master_key(self.master_key.get_secret_value()), previous)
        path = self.master_key_file
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(
                f"{PREFIX}MASTER_KEY: not set, and no key file {path} (`signatures up` "
                "generates one; or generate a key with `signatures keys generate`)"
            ) from None
        try:
            return Keyring(parse_master_key(text), previous)
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}MASTER_KEY: the key file {path} {exc}") from None

    def with_local_secret(self) -> Settings:
        """For one-machine runs (`up`, `demo`): secrets kept in the state directory.

        The dedupe secret and the master key are generated once and reused on every later
        run, so the same person keeps the same dedupe hash and the stored data keys stay
        readable; every other command on this machine finds the master key file by itself.
        Production sets SIGNATURES_DEDUPE_SECRET and SIGNATURES_MASTER_KEY instead.
        """
        update: dict[str, object] = {}
        if self.dedupe_secret is None:
            path = _generated(self.state_dir / "dedupe-secret", lambda: secrets.token_urlsafe(48))
            update["dedupe_secret"] = SecretStr(path.read_text().strip())
        if self.master_key is None:
            path = _generated(self.master_key_file, new_master_key)
            text = path.read_text().strip()
            try:
                parse_master_key(text)
            except ValueError as exc:
                raise ConfigError(f"{PREFIX}MASTER_KEY: the key file {path} {exc}") from None
            update["master_key"] = SecretStr(text)
        return self.model_copy(update=update) if update else self


def _no_password() -> str:
    raise ssl.SSLError("the key is encrypted")  # not supported: a key file is unencrypted


def _generated(path: Path, make: Callable[[], str]) -> Path:
    """The file, written once with a new secret (readable by its owner only) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # created with its final mode: the secret is never readable by others
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(make())
    return path


def _env_name(field: str) -> str:
    if field.isupper():  # reported under its alias, already the variable's name
        return field
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        first = info.validation_alias.choices[0]
        if isinstance(first, str):
            return first
    return f"{PREFIX}{field.upper()}"


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, for starting child processes with them."""
    env: dict[str, str] = {}
    for field, value in settings.model_dump().items():
        if value is None:
            continue
        secret = isinstance(value, SecretStr)
        env[_env_name(field)] = value.get_secret_value() if secret else str(value)
    return env


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise ConfigError with one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            field = str(error["loc"][0]) if error["loc"] else "?"
            lines.append(f"{_env_name(field)}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None
