"""What the user runs: the command line, recipes, the SQL command, the report."""
