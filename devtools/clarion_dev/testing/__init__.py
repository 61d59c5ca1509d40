"""Test helpers shared by Clarion's test tiers (fixtures live in the pytest plugins of this package)."""
