"""Test and benchmark servers the project owns that speak real wire formats (Gmail's HTTP API, ...).

Tests and benchmarks drive the production clients against these over real HTTP, so what is
exercised is the client library's actual requests and parsing, never a patched stand-in.
"""
