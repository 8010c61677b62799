"""The `signatures` command line: it assembles every other package, so it sits above them."""
