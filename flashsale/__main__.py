import sys

from flashsale.cli.main import main

sys.exit(main())
