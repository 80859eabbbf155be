"""``python -m broker_core`` runs the ``broker`` command line."""

from broker_core.cli import main

main()
