"""The `mmsearch` command line: a thin Typer shell over `retrieval` and `indexer`."""
