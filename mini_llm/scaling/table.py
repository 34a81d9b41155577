"""The run table that the scaling fits read: one CSV row per training run.

Required columns: params (N), tokens (D), flops (C, the run's training compute) and loss (the
final validation loss, nats/token). `mini-llm scaling sweep` also writes params_with_embeddings,
epochs (passes over the data), seconds and the run's settings; any column not named here is
kept as text and ignored by the fits, so anyone's runs can be read.
"""

import csv
import math
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

REQUIRED = ("tokens", "flops", "loss")  # plus the parameter column the caller picks
PARAMS_COLUMNS = ("params", "params_with_embeddings")


@dataclass
class Runs:
    """Columns as float64 arrays, one entry per run; `lines` are the CSV lines they came from,
    `columns` the table's header."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    L: np.ndarray
    lines: np.ndarray
    params_column: str
    columns: tuple = ()

    def __len__(self):
        return len(self.L)

    def take(self, index):
        """The runs at `index` (an array of positions, repeats allowed: a bootstrap resample)."""
        return Runs(self.N[index], self.D[index], self.C[index], self.L[index], self.lines[index],
                    self.params_column, self.columns)


def read_runs(path, params_column="params"):
    """The runs in the CSV file `path`, N taken from `params_column`. Every value the fits use
    must be a positive finite number; the first that is not is named by its line."""
    if params_column not in PARAMS_COLUMNS:
        raise DataError(f"--params-column must be one of {PARAMS_COLUMNS}, got {params_column!r}")
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"no run table at {path}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a readable CSV file: {e}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DataError(f"{path} is empty: expected a header line with {params_column}, "
                        f"{', '.join(REQUIRED)}")
    header = [cell.strip() for cell in rows[0]]
    wanted = (params_column, *REQUIRED)
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DataError(f"{path}, line 1: missing column(s) {', '.join(missing)} "
                        f"(the header has: {', '.join(header)})")
    at = {name: header.index(name) for name in wanted}
    values, lines = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank lines, e.g. at the end of the file
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
        values.append([_positive(path, line, name, row[at[name]]) for name in wanted])
        lines.append(line)
    if not values:
        raise DataError(f"{path} has a header but no runs")
    N, D, C, L = np.array(values, dtype=np.float64).T
    return Runs(N, D, C, L, np.array(lines), params_column, tuple(header))


def _positive(path, line, name, text):
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}, line {line}: {name} is {text!r}, not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise DataError(f"{path}, line {line}: {name} must be a positive finite number, got {text!r}")
    return value
