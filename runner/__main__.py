import sys

from juggler.runner.cli import main

sys.exit(main())
