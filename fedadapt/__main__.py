import sys

from fedadapt.cli.app import main

sys.exit(main())
