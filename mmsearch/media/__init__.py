"""Media I/O: which files are media, and how they decode (images, video keyframes and frames, text
passages, caption tables), with the guards a crawler of other people's folders needs.

A leaf package: it imports nothing else of mmsearch, so the indexer, queries, uploads, thumbnails
and training all read media the same way. Every per-file failure is a `DecodeError` whose message
is the reason recorded for the file.
"""
