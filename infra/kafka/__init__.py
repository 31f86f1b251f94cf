"""Fetch, format, start and stop a one-node KRaft Kafka broker from Maven Central jars."""
