"""``python -m esper_fast.bench <which> [options]``."""

from esper_fast.bench import main

raise SystemExit(main())
