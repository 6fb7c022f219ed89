"""The `umbrafs` command line: one module per command group, exit codes in one table."""
