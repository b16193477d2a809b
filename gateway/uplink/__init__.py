"""Uplinks: where the spool drains to."""
