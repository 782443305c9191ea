"""Lowering: a checked graph -> a Program of ISA instructions (schedule, buffers)."""
