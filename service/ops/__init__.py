"""Running the daemon in production: metrics, systemd notify, the status page."""
