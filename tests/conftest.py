"""Shared fixtures. Nothing here reaches the network."""
