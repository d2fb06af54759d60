import sys

from vnet.bench.run import main

sys.exit(main())
