"""pytest plugins for Clarion's tests: `clarion_dev.testing.telegram` and `clarion_dev.testing.smtp`."""
