"""python -m hpo.finalize: see hpo.finalize.cli."""

from hpo.finalize.cli import cli

if __name__ == "__main__":
    cli()
