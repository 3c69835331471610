"""Deployment on Flower's real engine: identities (certificates), the launch commands and the SuperNode guard."""
