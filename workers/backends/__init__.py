"""Model backends behind one interface: replay, openai, local."""
