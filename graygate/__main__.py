"""``python -m graygate``: the same CLI as the ``graygate`` command."""

from graygate.cli import main

if __name__ == "__main__":
    main()
