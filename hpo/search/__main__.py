"""python -m hpo.search: see hpo.search.cli."""

from hpo.search.cli import cli

if __name__ == "__main__":
    cli()
