"""Batch indexer: scan folders, decode media, embed in batches, commit to the store."""
