"""The prober: health-checks every probed address and publishes each result on NATS."""
