"""`python -m trial.cli`."""
from trial.cli import main

main()
