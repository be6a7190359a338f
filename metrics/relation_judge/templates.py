"""The judge's question templates, versioned.

Scores from a VLM judge move with the exact wording of the question (VQAScore keeps its template
fixed for this reason), so the templates are constants and ``TEMPLATE_VERSION`` names them. Every
result records the version, and the judge cache keys on it. Changing any text below (templates,
article rule, option layout) requires a new version; a test pins the rendered text of v1.

Subject phrases come from each subject's ``class_noun`` with an indefinite article ("a dog",
"an astronaut"); nouns in ``PLURAL_NOUNS`` take none ("glasses"), as in the RelationBench prompts.
The article follows the first letter (a, e, i, o, u -> "an"), which is wrong for words like
"unicorn" or "hour"; it is kept because it is part of the fixed wording.
"""

from __future__ import annotations

from collections.abc import Sequence

from relbench.metrics.functional.judge import option_letter

TEMPLATE_VERSION = "relbench-judge-v1"

# VQAScore-style relation question: "Does this image show a dog hugging a stuffed animal? ..."
RELATION_TEMPLATE = "Does this image show {statement}? Answer yes or no."
# DSG-style parent questions, one per subject.
PRESENCE_TEMPLATE = "Is there {subject} in this image? Answer yes or no."
PRESENCE_TEMPLATE_PLURAL = "Are there {subject} in this image? Answer yes or no."
# Multiple choice: one line per option, "A. a dog hugging a cat".
CHOICE_TEMPLATE = "Which option describes this image best?\n{options}\nAnswer with the letter of one option."
OPTION_LINE = "{letter}. {statement}"

PLURAL_NOUNS = frozenset({"glasses", "sunglasses", "shoes", "sneakers", "boots", "headphones", "scissors"})


def noun_phrase(noun: str) -> str:
    """'dog' -> 'a dog', 'astronaut' -> 'an astronaut', 'glasses' -> 'glasses'."""
    noun = noun.strip()
    if not noun:
        raise ValueError("empty subject noun")
    if noun.lower() in PLURAL_NOUNS:
        return noun
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def statement(nouns: Sequence[str], relation_phrase: str) -> str:
    """'a dog hugging a stuffed animal': the first subject, the relation, the others joined by 'and'."""
    if not nouns:
        raise ValueError("a relation statement needs at least one subject")
    head = f"{noun_phrase(nouns[0])} {relation_phrase.strip()}"
    rest = " and ".join(noun_phrase(noun) for noun in nouns[1:])
    return f"{head} {rest}" if rest else head


def relation_question(nouns: Sequence[str], relation_phrase: str) -> str:
    return RELATION_TEMPLATE.format(statement=statement(nouns, relation_phrase))


def presence_question(noun: str) -> str:
    template = PRESENCE_TEMPLATE_PLURAL if noun.strip().lower() in PLURAL_NOUNS else PRESENCE_TEMPLATE
    return template.format(subject=noun_phrase(noun))


def choice_question(nouns: Sequence[str], relation_phrases: Sequence[str]) -> str:
    """The multiple-choice question with the options in the given order (A, B, C, ...)."""
    if len(relation_phrases) < 2:
        raise ValueError("a multiple-choice question needs at least two options")
    lines = [
        OPTION_LINE.format(letter=option_letter(i), statement=statement(nouns, phrase))
        for i, phrase in enumerate(relation_phrases)
    ]
    return CHOICE_TEMPLATE.format(options="\n".join(lines))


def describe() -> dict[str, str]:
    """The templates as recorded in every result's settings."""
    return {
        "version": TEMPLATE_VERSION,
        "relation": RELATION_TEMPLATE,
        "presence": PRESENCE_TEMPLATE,
        "presence_plural": PRESENCE_TEMPLATE_PLURAL,
        "choice": CHOICE_TEMPLATE.replace("{options}", OPTION_LINE + " (one line per option)"),
    }
