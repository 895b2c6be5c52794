"""python -m hpo.plan: see hpo.plan.cli."""

from hpo.plan.cli import cli

if __name__ == "__main__":
    cli()
