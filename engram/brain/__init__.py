"""The brain: a memory-augmented LLM runtime on the bus (docs/architecture.md, "Brain")."""
