"""odenet's benchmark suite (not part of the installed package): ``python -m benchmarks``.

See ``benchmarks/README.md`` for the cases and what each ratio means.
"""
