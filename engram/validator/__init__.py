"""Engram validator: scoring, routing, replication, and the validator pipeline."""
