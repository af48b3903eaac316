"""Subcommands of the `dinoseg` CLI (see dinoseg/cli.py for the registry)."""
