"""Readers and writers of other libraries' adapter files (the adapters library, PEFT)."""
