"""Batch indexer: walk (scan) → plan (mark and sweep) → decode and embed (embed) → commit (run)."""
