"""Helpers the three tiers share: where things are (paths), how to run the CLI
(cli), trace builders (evbuild), and the kernel tier's host checks and
independent tracers (kernel). Fixtures stay in the conftest.py files."""
