"""`python -m dleval` is the `dleval` command."""

from dleval.cli import main

raise SystemExit(main())
