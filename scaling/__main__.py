"""`python -m scaling ...`: the same as the `scaling` command."""

from scaling.cli import main

raise SystemExit(main())
