"""``python -m queueproxy``: same as the ``queue-proxy`` command."""

from .cli import main

main()
