"""The contracts: message and record models, their JSON Schema, and the SQL schema."""
