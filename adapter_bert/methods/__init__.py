"""Adapter methods: one module per method family; see registry.py for the table."""
