"""PostTrainBench: agents post-train base LLMs; the pipeline evaluates, audits and ranks the checkpoints."""

__version__ = "0.1.0"
