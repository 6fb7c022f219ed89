"""The proxy server process: HTTP API, its SQLite store and record, the re-encryption workers."""
