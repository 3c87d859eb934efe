"""beokit provision pillar: diskless nodes take their place in a nettee chain from DHCP."""
