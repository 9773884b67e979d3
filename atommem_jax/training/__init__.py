"""Training: sharding, losses, rewards, packing, SFT and GRPO loops (import submodules directly)."""
