"""`python -m ftune` — also what `torchrun -m ftune` and `accelerate launch -m ftune` run on each rank."""

from ftune.cli import main

main()
