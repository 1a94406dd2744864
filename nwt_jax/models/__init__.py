"""Flax linen models: Memcodes, dVAE-Adv, discriminator, prior."""
