"""``python -m services.scheduler``: decide every domain's answers from config and probe results."""

from services.scheduler.service import run
from shared import process

if __name__ == "__main__":
    process.main("scheduler", run)
