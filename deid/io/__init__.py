"""fsspec listing, safe decode, atomic writes, metadata stripping, output naming."""
