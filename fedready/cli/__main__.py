"""``python -m fedready.cli``: the same as the ``fedready`` console script."""

from fedready.cli import main

main()
