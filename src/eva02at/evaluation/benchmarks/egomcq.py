"""EgoMCQ: which of five clips a query text describes; accuracy of inter-video and intra-video questions.

Queries and ground truth are one file, EgoVLP's ``egomcq.json``, parsed by ``eva02at.data.formats.egomcq`` (the
frames stage reads the choice clips from the same parse). A query is scored against the clips of its own
choices, ``<question>_<choice>``.
"""

from __future__ import annotations

import copy

import numpy as np

from eva02at.core.errors import BadInput
from eva02at.data.formats.egomcq import read_mcq_questions
from eva02at.evaluation.benchmarks import Benchmark, BenchmarkParams, Queries, register_benchmark
from eva02at.evaluation.metrics import egomcq_accuracy
from eva02at.export.embeddings import Embeddings

KEYS = ("inter_video", "intra_video", "overall")


@register_benchmark("egomcq")
class EgoMcq(Benchmark):
    def __init__(self, params: BenchmarkParams) -> None:
        super().__init__(params)
        self.questions = read_mcq_questions(params.truth)
        sizes = {len(question.choices) for question in self.questions}
        if len(sizes) != 1:
            raise BadInput(f"{params.truth}: questions have different numbers of choices: {sorted(sizes)}")
        self.num_choices = sizes.pop()
        self.answers = np.array([question.answer for question in self.questions], dtype=np.int64)
        self.types = np.array([question.kind for question in self.questions], dtype=np.int64)

    @classmethod
    def read_queries(cls, params: BenchmarkParams) -> Queries:
        questions = read_mcq_questions(params.queries)
        return [question.qid for question in questions], [question.text for question in questions]

    def score(self, videos: Embeddings, texts: Embeddings) -> dict[str, float]:
        query = texts.select([question.qid for question in self.questions], "EgoMCQ queries")  # (Q, D)
        clips = videos.select(self.clip_ids(), "EgoMCQ choices")
        clips = clips.reshape(len(self.questions), self.num_choices, -1)  # (Q, C, D)
        return self.accuracy(np.einsum("qd,qcd->qc", query, clips))

    def chance(self, rng: np.random.Generator) -> dict[str, float]:
        return self.accuracy(rng.standard_normal((len(self.questions), self.num_choices)))

    def clip_ids(self) -> list[str]:
        return [clip for question in self.questions for clip in question.choices]

    def without(self, missing: set[str]) -> EgoMcq:
        """Without the questions that have a missing choice: a question is scored over all its choices."""
        kept = [k for k, question in enumerate(self.questions) if not missing.intersection(question.choices)]
        restricted = copy.copy(self)
        restricted.questions = [self.questions[k] for k in kept]
        restricted.answers, restricted.types = self.answers[kept], self.types[kept]
        return restricted

    def accuracy(self, scores: np.ndarray) -> dict[str, float]:
        """Accuracies of ``[questions, choices]`` scores."""
        accuracy = egomcq_accuracy(scores, self.answers, self.types)
        return {key: accuracy[key] for key in KEYS}
