from everlearn.cli import main

raise SystemExit(main())
