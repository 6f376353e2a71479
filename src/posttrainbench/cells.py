"""Cell identity (agent x model x benchmark x seed) and the file layout every stage agrees on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Agents that do not post-train: the "Base" and "Instruct" rows (which set the scoring weights) and the
# base model prompted few-shot without a chat template, each with its built-in recipe and prompting.
REFERENCE_RECIPES = {"base": ("base", "chat"), "base-fewshot": ("base", "few-shot"), "instruct": ("instruct", "chat")}
REFERENCE_AGENTS = tuple(REFERENCE_RECIPES)


@dataclass(frozen=True, order=True)
class Cell:
    agent: str
    model: str
    benchmark: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.agent}/{self.model}/{self.benchmark}/seed{self.seed}"

    @property
    def is_reference(self) -> bool:
        return self.agent in REFERENCE_AGENTS

    def run_dir(self, results: str | Path = "results") -> Path:
        return Path(results) / "runs" / self.agent / self.model / self.benchmark / f"seed{self.seed}"

    def eval_json(self, results: str | Path = "results") -> Path:
        return Path(results) / "evals" / self.agent / self.model / self.benchmark / f"seed{self.seed}.json"

    def judge_json(self, results: str | Path = "results") -> Path:
        return Path(results) / "judge" / self.agent / self.model / self.benchmark / f"seed{self.seed}.json"


def staged_model_dir(model: str, variant: str = "base", resources: str | Path = "resources") -> Path:
    """Where the stage rule puts a model: ``variant`` is ``base`` or ``instruct``."""
    return Path(resources) / "models" / model / variant


def staged_benchmark_dir(benchmark: str, resources: str | Path = "resources") -> Path:
    return Path(resources) / "benchmarks" / benchmark
