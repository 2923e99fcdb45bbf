"""The config service: REST API over the ``gtm_config`` KV bucket and the event log."""
