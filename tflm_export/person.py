"""The sketch's person score and decision in Python, integer for integer what ``arduino/QGT/src/qgt_person.c``
computes: the dequantized probability of the person class in thousandths, round(1000 * scale * (q - zero
point)) with halves up, clamped to 0..1000 (exact: the float32 scale is taken as the rational it is), and
a decision with hysteresis.
"""

import dataclasses
import fractions

import numpy as np


def score_permille(output, person_index, scale, zero_point):
    """The person score (0..1000) of one int8 output vector."""
    steps = int(np.asarray(output, np.int8).reshape(-1)[person_index]) - int(zero_point)
    if steps <= 0:
        return 0
    exact = 1000 * fractions.Fraction(float(np.float32(scale))) * steps
    return min(1000, int(exact + fractions.Fraction(1, 2)))


@dataclasses.dataclass
class Detector:
    """Turns on at a score >= on_permille, off below off_permille (qgt_person_detector)."""
    person_index: int
    scale: float
    zero_point: int
    on_permille: int
    off_permille: int
    present: bool = False

    def __post_init__(self):
        if not 0 <= self.off_permille <= self.on_permille <= 1000:
            raise ValueError(f"thresholds need 0 <= off ({self.off_permille}) <= on ({self.on_permille}) <= 1000")

    def update(self, output):
        """(score, decision) after one output vector."""
        score = score_permille(output, self.person_index, self.scale, self.zero_point)
        if score >= self.on_permille:
            self.present = True
        elif score < self.off_permille:
            self.present = False
        return score, self.present
