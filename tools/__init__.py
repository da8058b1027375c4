"""Local tooling: the dev stack, the model and DingTalk simulators, the fleet for multi-replica runs."""
