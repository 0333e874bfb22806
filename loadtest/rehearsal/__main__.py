import sys

from loadtest.rehearsal.driver import main

sys.exit(main())
