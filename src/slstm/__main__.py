import sys

from slstm.cli import main

sys.exit(main())
