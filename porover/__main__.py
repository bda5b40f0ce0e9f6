import sys

from porover.cli import main

sys.exit(main())
