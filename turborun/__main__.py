from turborun.cli import main

raise SystemExit(main())
