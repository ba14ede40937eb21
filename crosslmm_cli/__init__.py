"""crosslmm: the command-line tool over the ``models`` library."""
