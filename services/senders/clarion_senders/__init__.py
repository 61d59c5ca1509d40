"""clarion_senders."""
