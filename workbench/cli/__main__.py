"""`python -m workbench.cli` runs the command line."""

from workbench.cli import main

main()
