"""``python -m kluis`` runs the command line."""

from kluis.cli.main import main

main()
