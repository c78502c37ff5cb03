"""The embedded default world: scikit-learn's handwritten digits and a tiny diffusion model.

`data` loads the 1,797 real 8x8 scans as 32x32 RGB images and splits them into a generator
split (the diffusion model trains on it only), a real pool (30 per class), a validation split
that settings are chosen on (20 per class) and a held-out test split (30 per class). `train`
trains the text-conditioned latent diffusion model shipped in `model/` (a standard diffusers
StableDiffusionPipeline folder).
"""
