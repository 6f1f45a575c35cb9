"""``python -m pretune``: the same as the ``pretune`` command (local workers start this way)."""

from pretune.cli.main import main

main()
