"""typer app; thin: parses, calls pipeline/evaluate, prints."""
