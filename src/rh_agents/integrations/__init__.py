"""Actors for real services. Each integration imports its client library lazily."""
