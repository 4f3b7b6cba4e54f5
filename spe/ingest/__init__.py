"""Registry ingest: identifier validation, pseudonymisation and the synthetic registry."""
