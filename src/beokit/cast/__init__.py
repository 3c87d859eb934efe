"""beokit cast pillar."""
