"""selfevolve: route each LLM query to the cheapest model that answers it well, and learn which one from traffic."""

__version__ = "0.1.0"
