"""Everything that consumes from Kafka: one runner, and a handler per consumer."""
