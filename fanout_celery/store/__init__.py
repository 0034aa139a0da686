"""Where run state lives: the Redis store (and the key layout, in one module)."""
