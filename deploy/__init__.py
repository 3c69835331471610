"""Deployment on Flower's real engine: identities, data contracts, local privacy limits."""
