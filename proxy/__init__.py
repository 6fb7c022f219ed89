"""Sharing through proxy re-encryption: identities, the proxy service and its client."""
