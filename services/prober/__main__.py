"""``python -m services.prober``: health-check every probed address, publish results."""

from services.prober.service import run
from shared import process

if __name__ == "__main__":
    process.main("prober", run)
