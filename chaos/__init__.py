"""Chaos scenarios: faults pulled on the product running as processes (`python chaos/run.py`)."""
