import sys

from laminar_supervisor.supervisor import main

sys.exit(main())
