"""augment: synthetic training data with Stable Diffusion."""
