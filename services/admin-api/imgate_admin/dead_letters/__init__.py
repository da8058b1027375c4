"""Dead letters: messages the consumers gave up on, to read, replay or discard."""
