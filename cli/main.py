"""The `signatures` command: every entry point, reading the same configuration.

Each command group lives in a module of its own; this one assembles them, in the order
`signatures --help` lists them, and turns configuration and key errors into one line.
"""

from __future__ import annotations

import sys

import asyncpg
import typer

from cli import bench, erasure, export, importing, pipeline, services, status
from cli.campaign import campaign_app
from cli.dlq import dlq_app
from cli.keys import keys_app
from cli.partner import partner_app
from cli.review import review_app
from runtime.pii import KeyProblem
from runtime.settings import ConfigError

app = typer.Typer(
    name="signatures",
    help="Petition signatures: ingest, validate, deduplicate, persist, count.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(campaign_app, name="campaign")
app.add_typer(dlq_app, name="dlq")
app.add_typer(partner_app, name="partner")
app.add_typer(review_app, name="review")
app.add_typer(erasure.retention_app, name="retention")
app.add_typer(keys_app, name="keys")
app.command("forget")(erasure.forget)
app.command("migrate")(pipeline.migrate)
app.command("topics")(pipeline.topics)
app.command("api")(services.api)
app.command("worker")(services.worker)
app.command("up")(pipeline.up)
app.command("demo")(pipeline.demo)
app.command("bench")(bench.bench)
app.command("bench-stream")(bench.bench_stream)
app.command("status")(status.status)
app.command("reconcile")(status.reconcile)
app.command("import")(importing.import_)
app.command("export")(export.export)
app.command("schema")(pipeline.schema)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"configuration error: {line}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    except KeyProblem as exc:  # a wrong master key, a data key missing: never personal data
        print(f"key error: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    except (asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        # PostgreSQL's own words name the database or the role, never a password
        print(  # noqa: T201
            f"cannot connect to PostgreSQL: {exc} (DATABASE_URL, or the command's own"
            " SIGNATURES_*_DATABASE_URL)",
            file=sys.stderr,
        )
        sys.exit(1)
    except OSError as exc:
        if exc.errno == 111:  # connection refused: say which service
            print(f"cannot connect: {exc.strerror}", file=sys.stderr)  # noqa: T201
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
