"""``python -m services.edge``: the authoritative DNS edge (one process, or N SO_REUSEPORT workers)."""

from services.edge import workers
from services.edge.service import run
from shared import process

if __name__ == "__main__":
    process.main("edge", run, before=workers.fork_if_asked)
