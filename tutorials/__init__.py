"""Executed tutorial notebooks; ``python -m tutorials.run`` runs them."""
