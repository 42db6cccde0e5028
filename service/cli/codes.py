"""Exit codes of the ``moco`` command."""

EXIT_OK, EXIT_FAIL = 0, 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
