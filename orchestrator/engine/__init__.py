"""The daemon's moving parts: admission and submit, polling, fetching, recovery."""
