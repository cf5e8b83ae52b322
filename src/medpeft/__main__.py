from medpeft.cli import main

raise SystemExit(main())
