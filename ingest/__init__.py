"""Everything that produces into Kafka: the HTTP API, file import, the load generator."""
