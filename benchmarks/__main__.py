"""``python -m benchmarks``: the suite's command line (``benchmarks/run.py``)."""

from benchmarks.run import main

raise SystemExit(main())
