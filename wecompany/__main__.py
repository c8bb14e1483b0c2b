"""``python -m wecompany``: the operators' command line (:mod:`wecompany.cli`)."""

from wecompany.cli import main

main()
