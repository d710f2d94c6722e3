"""The `vib-deploy` command line: the typer app (app.py), its study commands and shared helpers."""
