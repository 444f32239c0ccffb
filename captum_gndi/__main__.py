"""``python -m captum_gndi``: the ``captum-gndi`` command line."""

from .cli import main

raise SystemExit(main())
