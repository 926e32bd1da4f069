"""Out-of-scene measurements of a person detector against its float teacher (data/ood, no hand labels needed),
and the Pareto front of accuracy against bytes; used by accuracy_vs_size.py.

On the out-of-scene crops (labeled and unlabeled alike) the teacher's decision (person probability > 0.5)
is the reference: a student's *agreement* is the share of crops on which it decides the same, its *AUC* how
well its person probability ranks the teacher's person crops above the teacher's non-person crops. Where a
crop's label is unambiguous (data/ood/labeled) accuracy, person recall and non-person specificity are
measured against the label. Crops of one photo overlap, so the spread is estimated by resampling photos.
"""

import numpy as np

PERSON = 1  # class index of "person" (qgt_keras.datasets.VWW_CLASS_NAMES)
THRESHOLD = 0.5
BOOTSTRAP_SAMPLES = 1000


def person_probability(predict, images):
    """P(person) of each image; ``predict`` maps a batch of images to class probabilities."""
    return np.asarray(predict(images))[:, PERSON]


def roc_auc(scores, positive):
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (ties count one half)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    count_positive, count_negative = int(positive.sum()), int((~positive).sum())
    if not count_positive or not count_negative:
        raise ValueError("AUC needs both positive and negative examples")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties: each run of equal scores shares the mean of its ranks.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[positive].sum() - count_positive * (count_positive + 1) / 2)
                 / (count_positive * count_negative))


def photo_bootstrap_std(values, photo_ids, seed=0):
    """Standard deviation of the mean of per-crop ``values`` when whole photos are resampled."""
    photos, index = np.unique(photo_ids, return_inverse=True)
    sums = np.bincount(index, weights=np.asarray(values, np.float64), minlength=len(photos))
    counts = np.bincount(index, minlength=len(photos))
    draws = np.random.default_rng(seed).integers(0, len(photos), (BOOTSTRAP_SAMPLES, len(photos)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    return float(means.std())


def out_of_scene(student_person, teacher_person, ood):
    """The measurements of the module docstring for P(person) arrays over the crops of ``ood``
    (a qgt_keras.datasets.OutOfScene)."""
    teacher_decision = teacher_person > THRESHOLD
    decision = student_person > THRESHOLD
    same = decision == teacher_decision
    labeled = ood.labeled
    person, non_person = ood.labels == PERSON, ood.labels == 1 - PERSON
    return {
        "agreement": float(same.mean()),
        "agreement_photo_std": photo_bootstrap_std(same, ood.photo_ids),
        # None where the teacher decides one way on every crop (a smoke run's barely trained teacher)
        "auc_vs_teacher": roc_auc(student_person, teacher_decision) if 0 < teacher_decision.sum() < len(same)
        else None,
        "person_rate": float(decision.mean()),
        "labeled_accuracy": float((decision[labeled] == (ood.labels[labeled] == PERSON)).mean()),
        "person_recall": float(decision[person].mean()),
        "non_person_specificity": float((~decision[non_person]).mean()),
    }


def pareto_front(points):
    """Indices of the (bytes, accuracy) points that no other point beats: none has at most their bytes and
    at least their accuracy with one of the two strictly better."""
    front = []
    for i, (size, accuracy) in enumerate(points):
        if not any((other_size <= size and other_accuracy >= accuracy)
                   and (other_size < size or other_accuracy > accuracy)
                   for j, (other_size, other_accuracy) in enumerate(points) if j != i):
            front.append(i)
    return front
