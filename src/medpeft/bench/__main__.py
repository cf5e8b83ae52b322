import sys

from medpeft.bench import main

sys.exit(main())
