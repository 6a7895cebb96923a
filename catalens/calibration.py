"""Match probabilities: what a hit's scores say about P(it is what the query asks for).

Cosines and reranker scores mean different things for different queries and catalogs, so
nobody can cut a result list on them. Each version carries a Platt scaling (a logistic map)
fitted at index time on pairs generated from its own catalog (see indexer/calibrate.py):
one over the first-stage cosine, one over the reranker's logit and the cosine; both also read
how many of the visible facet values the query names (the version's lexicon) a hit lacks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from catalens.errors import IndexArtifactError

CALIBRATION = "calibration.json"


@dataclass(frozen=True)
class Platt:
    """P = sigmoid(features . coef + intercept)."""

    coef: tuple[float, ...]
    intercept: float

    def __call__(self, features: np.ndarray) -> np.ndarray:
        z = np.asarray(features, np.float64) @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


@dataclass(frozen=True)
class Calibration:
    """A version's match-probability maps and what they were fitted on."""

    first_stage: Platt  # features: [cosine, mismatch]
    reranked: Platt | None  # features: [logit(reranker score), cosine, mismatch]
    pairs: int
    positives: int
    fit: dict[str, float]  # held-out accuracy of each map on the generated pairs
    # The facet columns whose mismatch is a feature (those a picture shows); versions written
    # before it have none, and maps over the scores alone.
    columns: tuple[str, ...] = ()

    def probability(self, cosine: float, rerank_score: float | None = None, mismatch: float = 0.0) -> float:
        """P(match) of one hit: from the cosine, the reranker's score when it was reranked, and how many
        facet values the query names (in `columns`) the hit lacks."""
        if rerank_score is not None and self.reranked is not None:
            return float(self.reranked(_features(self.reranked, logit(rerank_score), cosine, mismatch))[()])
        return float(self.first_stage(_features(self.first_stage, cosine, mismatch))[()])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        first = Platt(tuple(data["first_stage"]["coef"]), data["first_stage"]["intercept"])
        rr = data.get("reranked")
        reranked = Platt(tuple(rr["coef"]), rr["intercept"]) if rr else None
        return cls(first, reranked, int(data["pairs"]), int(data["positives"]), dict(data.get("fit") or {}),
                   tuple(data.get("columns") or ()))


def _features(platt: Platt, *values: float) -> np.ndarray:
    """The leading features a map was fitted on (an older version's map has no mismatch)."""
    return np.array(values[:len(platt.coef)])


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def fit_platt(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, iterations: int = 100) -> Platt:
    """Logistic regression by Newton's method (IRLS) with a small L2 penalty on the weights.

    A few features and a few thousand pairs: fifteen lines of numpy instead of a scikit-learn
    dependency in every install.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    design = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(design.shape[1])
    penalty = np.diag([l2] * x.shape[1] + [0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -50, 50)))
        grad = design.T @ (p - y) + penalty @ w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Platt(tuple(float(v) for v in w[:-1]), float(w[-1]))


def save_calibration(path: Path, calibration: Calibration) -> None:
    path.write_text(calibration.to_json())


def load_calibration(path: Path) -> Calibration | None:
    """The version's calibration, or None for a version written without one."""
    try:
        return Calibration.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexArtifactError(f"{path}: unreadable calibration ({exc})") from exc
