"""generative_model package."""
