import sys

from crossfuse.cli.main import main

sys.exit(main())
