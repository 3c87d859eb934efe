"""beokit dsh pillar."""
