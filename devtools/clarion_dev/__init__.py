"""clarion_dev."""
