"""Model analysis: parameter and FLOP counts."""
