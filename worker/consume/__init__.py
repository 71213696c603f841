"""Kafka consumption: batching, offset tracking and the consume loop."""
