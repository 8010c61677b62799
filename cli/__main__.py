"""`python -m cli`: the `signatures` command, as the supervisor starts its children."""

from cli.main import main

main()
