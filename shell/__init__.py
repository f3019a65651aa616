"""The `paretoserve` command line: a thin shell over the planner, the workers and the research package.

`main` builds the parser from the command modules in `paretoserve.shell.commands`; every user error is a
`CliError` (`errors.py`), printed as one line with exit status 2.
"""
