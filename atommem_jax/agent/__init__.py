"""The agent: AtomMem tag protocol, prompts, chunk-stream environment, rollouts."""
