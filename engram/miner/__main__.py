"""``python -m engram.miner run|worker|rebuild|...``: the miner commands on their own."""

from engram.cli.miner import standalone

standalone(prog_name="python -m engram.miner")
