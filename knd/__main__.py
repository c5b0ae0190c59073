"""``python -m knd``."""

from .cli import main

main()
