"""Infrastructure: the local Kafka launcher and the ClickHouse DDL."""
