"""``gtmctl``: the command-line client of the GTM REST API (declarative apply, get, status, events, explain)."""
