"""Generation: load a diffusers pipeline and render work items into records."""
