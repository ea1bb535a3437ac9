"""cogcot dataset package."""
