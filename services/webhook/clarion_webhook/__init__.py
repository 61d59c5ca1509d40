"""clarion_webhook."""
