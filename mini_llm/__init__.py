"""mini-llm lab: a small GPT built from first principles, and a kernel lab around it."""

__version__ = "0.1.0"
