"""The scheduler: the only place where GTM decides which records a domain answers."""
