"""t5vae-jax: turn a pretrained T5 into a text VAE by finetuning (Park & Lee 2021)."""
