"""Shipped data: the model catalogue, the demo slice of RouterBench, loaders."""
