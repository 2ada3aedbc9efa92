"""`python -m p2p` is the `gpunet` command (for environments without the console script)."""

from p2p.cli.main import main

main()
