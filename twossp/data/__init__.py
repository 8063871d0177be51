"""Text for calibration and evaluation: named sources (hub files, the offline Lee corpus) and local files."""
