"""Helpers the tests share: a CLI runner, an S3 server and a fault proxy, hostile inputs, real photos."""
