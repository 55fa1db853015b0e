"""Builders that turn real offline data into crossfuse manifests."""
