"""Built-in agents that act on events through the Ringez API."""
