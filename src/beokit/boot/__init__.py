"""beokit boot pillar."""
