"""``python -m turborun.simulator``: the simulator's own command line (``turborun simulate``)."""

from turborun.simulator import main

raise SystemExit(main())
