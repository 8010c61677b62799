"""What the ingest API and the consumers share: settings, logging, connections, the CLI."""
