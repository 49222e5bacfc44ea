"""Model file formats the library can check without loading (no code runs on load)."""
