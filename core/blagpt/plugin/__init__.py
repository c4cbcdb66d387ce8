"""The plugin contract: the hookspecs, the value types that cross the boundary, the registry that
discovers plugins through the entry-point group ``blagpt``, and the core's own built-in plugin."""
