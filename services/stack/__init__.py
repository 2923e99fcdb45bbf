"""Run the whole GTM on one machine: embedded NATS, config, prober, scheduler, two edges."""
