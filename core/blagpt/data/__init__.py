"""Data: tokenizers, the shard format, the embedded corpus and the distributed loader."""
