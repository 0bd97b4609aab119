"""``python -m hw1.bench``: the command line of :mod:`hw1.bench.cli`."""
from hw1.bench.cli import main
from hw1.cli import run

if __name__ == "__main__":
    run(main)
