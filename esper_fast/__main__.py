"""``python -m esper_fast`` = the ``esper-fast`` command."""

from esper_fast.cli import main

raise SystemExit(main())
