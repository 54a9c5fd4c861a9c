"""The ``ers`` command: ``main.py`` builds the command tree; one module per command group."""
