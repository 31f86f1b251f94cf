"""Faust agents and Kafka/ClickHouse adapters around the pure core."""
