"""``python -m services.config``: the REST API over the config store."""

from services.config.service import run
from shared import process

if __name__ == "__main__":
    process.main("config", run)
