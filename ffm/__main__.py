from ffm.cli import main

raise SystemExit(main())
