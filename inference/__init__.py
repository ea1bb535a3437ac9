"""cogcot inference package."""
