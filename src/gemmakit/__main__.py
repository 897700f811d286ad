import sys

from gemmakit.cli.main import main

sys.exit(main())
