from trainlab.cli.main import main

raise SystemExit(main())
