"""The retrieval core: encoders, the SQLite store, the index directory with its FAISS cache and
index policy, and the query layer. It reads media through `mmsearch.media` and never imports the
indexer; `mmsearch.SearchIndex` sits above both."""
