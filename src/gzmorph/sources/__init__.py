"""Clients and parsers of the real Galaxy Zoo data sources."""
