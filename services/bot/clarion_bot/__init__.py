"""clarion_bot."""
