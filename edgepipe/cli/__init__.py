"""The `edgepipe` command line: `main` parses and dispatches; the other modules add command groups."""
