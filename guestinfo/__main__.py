from guestinfo.cli import main

raise SystemExit(main())
