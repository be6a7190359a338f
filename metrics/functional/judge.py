"""Pure math of the VLM relation judge: answer probabilities, gating, CircularEval, parsing.

No models and no state. Conventions:

* **P(yes)** (VQAScore): the softmax over the FULL vocabulary at the first generated position,
  summed over every token id that spells "yes" (the caller decides the spellings); likewise P(no).
  Both are computed in float32 whatever the logits' dtype.
* **Normalised P(yes)** = P(yes) / (P(yes) + P(no)). It is computed as
  ``sigmoid(logsumexp(logits[yes]) - logsumexp(logits[no]))``, which is the same quantity but
  stays defined when both probabilities underflow to 0 in float32.
* An answer counts as "yes" when the normalised P(yes) is above 0.5 (0.5 itself is "no").
* **Gating** (DSG): a question whose parent questions (here: "is each subject present?") are not
  all answered "yes" is answered "no" without looking at its own answer.
* **CircularEval** (MMBench / CRPE): a multiple-choice question is asked once per cyclic rotation
  of its options and counts as correct only if every rotation is answered correctly.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable, Sequence

import torch

YES_THRESHOLD = 0.5
LETTERS = string.ascii_uppercase


# --------------------------------------------------------------------------------------------
# Probabilities from logits


def _check_ids(token_ids: Sequence[int], vocab_size: int, what: str) -> list[int]:
    ids = list(token_ids)
    if not ids:
        raise ValueError(f"{what}: no token ids")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"{what}: token ids {ids} outside the vocabulary of {vocab_size}")
    return sorted(set(ids))


def answer_log_masses(logits: torch.Tensor, token_id_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """log of the softmax probability mass of each id set: (N, V) -> (N, K), float32.

    ``token_id_sets[k]`` lists the ids that spell answer k; duplicates within a set count once.
    Sets must not share ids (a token cannot mean two answers).
    """
    if logits.ndim != 2:
        raise ValueError(f"answer_log_masses: expected logits of shape (N, V), got {tuple(logits.shape)}")
    vocab = logits.shape[1]
    sets = [_check_ids(ids, vocab, f"answer {k}") for k, ids in enumerate(token_id_sets)]
    seen: set[int] = set()
    for ids in sets:
        if seen & set(ids):
            raise ValueError(f"answer_log_masses: token ids {sorted(seen & set(ids))} spell two different answers")
        seen |= set(ids)
    log_probs = logits.float().log_softmax(dim=-1)
    return torch.stack([log_probs[:, ids].logsumexp(dim=-1) for ids in sets], dim=-1)


def yes_no_probabilities(
    logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P(yes), P(no), normalised P(yes))`` per row of (N, V) first-position logits; each (N,)."""
    masses = answer_log_masses(logits, [yes_ids, no_ids])
    log_yes, log_no = masses[:, 0], masses[:, 1]
    return log_yes.exp(), log_no.exp(), torch.sigmoid(log_yes - log_no)


def option_probabilities(logits: torch.Tensor, option_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Softmax mass (full vocabulary) of each option's letter tokens: (N, V) -> (N, K)."""
    return answer_log_masses(logits, option_ids).exp()


def normalized_yes(p_yes: float, p_no: float) -> float | None:
    """P(yes) / (P(yes) + P(no)) from two probabilities (e.g. API logprobs); None if both are 0."""
    total = p_yes + p_no
    return p_yes / total if total > 0 else None


def is_yes(normalized: float | None) -> bool | None:
    return None if normalized is None else normalized > YES_THRESHOLD


# --------------------------------------------------------------------------------------------
# Gating (DSG)


def gated_answer(parents: Sequence[bool | None], child: bool | None) -> bool | None:
    """The child's answer counted only when every parent is "yes".

    A parent "no" makes the result False whatever else is unknown; otherwise an unknown (None,
    e.g. a failed API call) parent or child makes the result unknown.
    """
    if any(parent is False for parent in parents):
        return False
    if any(parent is None for parent in parents) or child is None:
        return None
    return child


# --------------------------------------------------------------------------------------------
# Multiple choice and CircularEval


def option_letter(index: int) -> str:
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"option index {index} outside A-Z")
    return LETTERS[index]


def rotations(n_options: int) -> list[tuple[int, ...]]:
    """The n cyclic rotations of n options: rotation r shows option ``(i + r) % n`` at position i."""
    if n_options < 1:
        raise ValueError("rotations: need at least one option")
    return [tuple((i + r) % n_options for i in range(n_options)) for r in range(n_options)]


def circular_correct(chosen: Sequence[int | None], correct: Sequence[int]) -> bool | None:
    """CircularEval over rotations: True only if every rotation chose its correct position.

    A wrong answer in any rotation makes it False even when other rotations failed (None);
    otherwise a failed rotation makes the result unknown (None).
    """
    if len(chosen) != len(correct) or not chosen:
        raise ValueError(f"circular_correct: {len(chosen)} answers for {len(correct)} rotations")
    if any(c is not None and c != k for c, k in zip(chosen, correct)):
        return False
    if any(c is None for c in chosen):
        return None
    return True


def position_bias(chosen_letters: Iterable[str | None], n_letters: int) -> dict[str, float]:
    """Percent of the answered questions that chose each of the first ``n_letters`` letters.

    A judge without position bias that always knows the answer picks each letter equally often
    under CircularEval (every option visits every position); a judge that always says "A" gets
    A = 100. Failed answers (None) are left out; with no answers every share is 0.
    """
    letters = [option_letter(i) for i in range(n_letters)]
    counts = dict.fromkeys(letters, 0)
    total = 0
    for letter in chosen_letters:
        if letter is None:
            continue
        if letter not in counts:
            raise ValueError(f"position_bias: letter {letter!r} outside {letters[0]}-{letters[-1]}")
        counts[letter] += 1
        total += 1
    return {letter: (100.0 * count / total if total else 0.0) for letter, count in counts.items()}


def choose_distractors(candidates: Sequence[str], k: int, seed: int, key: str) -> list[str]:
    """``k`` of ``candidates`` (all of them if fewer), the same for the same (seed, key, candidates).

    Candidates are sorted first so that their order in the spec does not matter; the generator is
    seeded with a string, which Python hashes with SHA-512 (independent of PYTHONHASHSEED).
    """
    if k < 0:
        raise ValueError("choose_distractors: k must be >= 0")
    pool = sorted(set(candidates))
    rng = random.Random(f"relbench-distractors:{seed}:{key}")
    return rng.sample(pool, min(k, len(pool)))


def option_order(options: Sequence[str], seed: int, key: str) -> list[str]:
    """A seeded shuffle of the options (the base order that CircularEval then rotates)."""
    order = sorted(options)
    random.Random(f"relbench-options:{seed}:{key}").shuffle(order)
    return order


# --------------------------------------------------------------------------------------------
# Parsing text answers (API judges)
#
# Strict on purpose: only the FIRST word counts. A lenient search ("the first yes or no anywhere")
# reads "There is no way to tell." as "no" and turns a refusal into a score. An answer whose
# first word is not the expected one is unparseable: a failure, never a yes, a no or an option.

_EDGE_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019"  # ASCII and curly quotes
UNPARSEABLE_SHOWN = 80  # characters of an unparseable answer kept in its failure reason


def first_word(text: str | None) -> tuple[str, str]:
    """(the first whitespace-separated word, that word with punctuation trimmed from both ends)."""
    words = (text or "").split(maxsplit=1)
    if not words:
        return "", ""
    return words[0], words[0].strip(_EDGE_PUNCTUATION)


def unparseable_reason(text: str | None) -> str:
    """The failure reason of an answer no parser could read: ``unparseable: <first 80 chars>``."""
    return f"unparseable: {(text or '').strip()[:UNPARSEABLE_SHOWN]}"


def parse_yes_no(text: str | None) -> bool | None:
    """True / False when the answer's first word, punctuation trimmed, is "yes" / "no" in any
    case ("Yes.", " NO!", "**yes**, it does"); None for anything else ("Yesterday", "Nope",
    "There is no way to tell.", "")."""
    word = first_word(text)[1].lower()
    return True if word == "yes" else False if word == "no" else None


def parse_choice(text: str | None, n_options: int) -> int | None:
    """The option index when the answer's first word is one of the first ``n_options`` capital
    letters, alone ("B") or with punctuation ("B.", "(C) riding", "**A**"); None otherwise.

    Letters are case-sensitive and a bare capital followed by more words ("A dog hugging a cat")
    is read as an article, not as option A. "Answer: B" is unparseable (first word "Answer").
    """
    raw, word = first_word(text)
    if len(word) != 1 or word not in LETTERS:
        return None
    if raw == word and len((text or "").split()) > 1:  # "A dog ...": an article
        return None
    index = LETTERS.index(word)
    return index if index < n_options else None
