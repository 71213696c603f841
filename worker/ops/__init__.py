"""Operator commands behind `gpm status`, `gpm replay` and `gpm dlq`."""
