"""Kluis: self-hosted backup for Linux machines and virtual machines."""

__version__ = "0.1.0"
