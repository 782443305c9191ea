"""The IR: the Graph of op instances (graph.py) and its shape verification (shapes.py)."""
