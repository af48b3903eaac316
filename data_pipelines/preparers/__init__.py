"""Dataset preparers: one module per family, each registering its datasets by name.

`get(name, **options)` returns a preparer, `names()` lists them; `writer.prepare` runs one.
"""
from dinoseg.data_pipelines.preparers.base import (BadRawData, Issues, Preparer, Scan, SkipExample, get, names,
                                                   register)

__all__ = ["BadRawData", "Issues", "Preparer", "Scan", "SkipExample", "get", "names", "register"]
