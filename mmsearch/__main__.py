"""`python -m mmsearch ...` runs the command line."""
from .cli.main import console

console()
