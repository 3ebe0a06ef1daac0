"""Routing: where an alarm goes, when, and what happens when nobody takes it."""
