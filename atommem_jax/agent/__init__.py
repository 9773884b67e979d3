"""The agent: prompts, chunk-stream environment, rollouts."""
