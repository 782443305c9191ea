"""Reports on a checked graph: summary tables (summary.py) and diagrams (render.py)."""
