"""``python -m ffm``: the same entry point as the ``ffm`` command."""

from ffm.cli import main

raise SystemExit(main())
