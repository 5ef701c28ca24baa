"""The ``odenet`` command line: thin Click commands over the odenet library."""
