"""Sinks: Parquet shards (the source of truth) and the exports derived from them."""
