"""Blobs: images and PDFs kept by content (``content_cid``), archived on Arweave, described,
and remembered as memories that semantic search finds (docs/architecture.md, "Blobs")."""
