"""The wire: Avro codec, topic names, validation, dead letters, tenancy, and core objects <-> records."""
