"""clarion_operator."""
