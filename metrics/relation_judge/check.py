"""``relbench judge check``: how well a judge answers a labelled judge set, before a large run trusts it.

For one or two judges (``--model judge=...``, built like the relation metrics build theirs:
``metric.build_judge``, answers through the same ``CachedJudge`` and disk cache, questions from the
same versioned templates), every question of a judge set (``judge_set``) is asked and compared with
its label. Statistics (math in ``relbench.metrics.functional.judge_check``), per scope:

* scopes: ``all`` (every yes/no question), ``relation`` and ``presence`` (by question kind),
  ``relation:<id>`` (the relation questions about one relation: its positives, the other-relation
  negatives asking about it, its collage negatives), ``group:<group>`` and ``source:<label source>``;
* accuracy, balanced accuracy, AUROC of the normalised P(yes), ECE over ``n_bins`` reliability bins,
  the fraction of unparseable answers and of failed answers (failures are left out of the other
  statistics and counted here);
* multiple choice: CircularEval accuracy (right in every rotation), accuracy of single rotations,
  and the position bias (percent of answered rotations choosing each letter); per relation too;
* with two judges: Cohen's kappa of their yes/no answers on the questions both answered.

Undefined statistics are NaN (written as null / empty) and the notes say why (one label only,
constant P(yes), one answer throughout). Results carry the judge's identity (``judge_identity``:
judge id, revision, dtype, API base URL and answer mode, tiny seed, template version), the set's
name and digest. ``save_check`` writes ``check.json``, ``summary.csv``, ``reliability.csv``,
``choice.csv``, ``answers.csv`` (and ``agreement.csv`` for two judges) to the output folder, and
files each judge's part in the check store (``store_dir``, keyed by identity and set) where
``relbench report`` finds it for the relation metrics judged by that judge (``find_checks``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from relbench.errors import RelbenchError
from relbench.metrics.relation_judge import ChoiceQuestion, YesNoQuestion, failure_kind, templates
from relbench.metrics.relation_judge.judge_set import JudgeSet, item_image

CHECK_SCHEMA = 1
# The settings that name a judge's answers (every relation metric records them in its settings).
IDENTITY_KEYS = ("judge", "judge_id", "revision", "dtype", "base_url", "logprobs", "seed")
ITEMS_PER_CALL = 8  # images asked about per judge call (bounds the images held in memory)
STORE_ENV = "RELBENCH_JUDGE_CHECKS"


# --------------------------------------------------------------------------------------------
# Identity and the check store


def judge_identity(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What names a judge's answers: its identity settings present, and the template version."""
    identity = {key: settings[key] for key in IDENTITY_KEYS if settings.get(key) is not None}
    identity["template_version"] = settings.get("template_version") or templates.TEMPLATE_VERSION
    return identity


def identity_key(identity: Mapping[str, Any]) -> str:
    canonical = json.dumps(dict(identity), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def store_dir() -> Path:
    """Where checks are filed for reports: ``$RELBENCH_JUDGE_CHECKS``, else ``~/.cache/relbench/judge_checks``."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relbench" / "judge_checks"


def find_checks(settings: Mapping[str, Any], folder: Path | None = None) -> list[dict[str, Any]]:
    """The stored checks of the judge named by a relation metric's ``settings`` (newest first)."""
    identity = judge_identity(settings)
    found = []
    for path in sorted((folder or store_dir()).glob(f"{identity_key(identity)}/*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged file is no check
        if isinstance(record, dict) and record.get("schema") == CHECK_SCHEMA and record.get("identity") == identity:
            found.append(record)
    return sorted(found, key=lambda r: str(r.get("created", "")), reverse=True)


# --------------------------------------------------------------------------------------------
# Asking


@dataclass
class Answer:
    """One question of the set and the judge's answer (a choice question: all its rotations)."""

    item: str
    ask: str
    group: str
    label_source: str
    relation: str | None
    subject: str | None
    label: bool | None  # yes/no questions
    question: str
    p_yes: float | None = None  # normalised P(yes)
    answer: bool | None = None
    source: str | None = None
    error: str | None = None
    raw_text: str | None = None
    expected_letters: list[str] = field(default_factory=list)  # choice: per rotation
    chosen_letters: list[str | None] = field(default_factory=list)
    circular: bool | None = None  # choice: right in every rotation (None: a rotation failed, none wrong)

    @property
    def failed(self) -> bool:
        return self.error is not None


def ask_set(judge: Any, judge_set: JudgeSet, data_root: Path, progress: Callable[[int, int], None] | None = None) -> list[Answer]:
    """Every question of the set asked of ``judge`` (a ``Judge`` or ``CachedJudge``), in set order."""
    from relbench.metrics.functional.judge import circular_correct, option_letter, rotations

    answers: list[Answer] = []
    items = judge_set.items
    for start in range(0, len(items), ITEMS_PER_CALL):
        chunk = items[start:start + ITEMS_PER_CALL]
        yes_no: list[tuple[Answer, YesNoQuestion]] = []
        choice: list[tuple[Answer, list[ChoiceQuestion], list[int]]] = []
        for item in chunk:
            image = item_image(judge_set, item, data_root)
            for q in item.questions:
                text = judge_set.question_text(item, q)
                record = Answer(item.id, q.ask, q.group, q.label_source, q.relation, q.subject, q.label, text)
                answers.append(record)
                if q.ask != "choice":
                    yes_no.append((record, YesNoQuestion(image, text)))
                    continue
                asked, correct = [], []
                for rotation in rotations(len(q.options)):
                    ordered = [q.options[i] for i in rotation]
                    correct.append(ordered.index(str(q.relation)))
                    asked.append(ChoiceQuestion(image, judge_set.question_text(item, q, ordered), len(ordered)))
                choice.append((record, asked, correct))
        replies = judge.yes_no([question for _, question in yes_no]) if yes_no else []
        for (record, _), reply in zip(yes_no, replies):
            record.p_yes, record.answer, record.source = reply.normalized, reply.answer, reply.source
            record.error, record.raw_text = reply.error, reply.raw_text
        flat = [question for _, asked, _ in choice for question in asked]
        picks = judge.choice(flat) if flat else []
        offset = 0
        for record, asked, correct in choice:
            rotation_answers = picks[offset:offset + len(asked)]
            offset += len(asked)
            chosen = [reply.choice for reply in rotation_answers]
            record.expected_letters = [option_letter(c) for c in correct]
            record.chosen_letters = [None if c is None else option_letter(c) for c in chosen]
            record.circular = circular_correct(chosen, correct)
            failed = [reply for reply in rotation_answers if reply.failed]
            if failed:
                record.error, record.raw_text = failed[0].error, failed[0].raw_text
            record.source = rotation_answers[0].source if rotation_answers else None
        if progress is not None:
            progress(min(start + ITEMS_PER_CALL, len(items)), len(items))
    return answers


# --------------------------------------------------------------------------------------------
# Statistics


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _failure_counts(errors: Iterable[str | None]) -> tuple[int, int]:
    """(failed, unparseable) among the errors given (None = answered)."""
    kinds = [failure_kind(error) for error in errors if error is not None]
    return len(kinds), sum(kind == "unparseable" for kind in kinds)


def yes_no_scope(answers: Sequence[Answer], n_bins: int) -> dict[str, Any]:
    """The statistics of a scope of yes/no questions (see the module docstring)."""
    from relbench.metrics.functional import judge_check as jc

    answered = [a for a in answers if not a.failed and a.p_yes is not None]
    labels = [bool(a.label) for a in answered]
    p_yes = [float(a.p_yes) for a in answered]  # type: ignore[arg-type]
    said = [bool(a.answer) for a in answered]
    failed, unparseable = _failure_counts(a.error for a in answers)
    bins = jc.reliability_bins(labels, p_yes, n_bins)
    n = len(answers)
    return {
        "n": n,
        "n_answered": len(answered),
        "n_yes_labels": sum(labels),
        "n_no_labels": len(labels) - sum(labels),
        "yes_answer_rate": sum(said) / len(said) if said else math.nan,
        "accuracy": jc.accuracy(labels, said),
        "balanced_accuracy": jc.balanced_accuracy(labels, said),
        "auroc": jc.auroc(labels, p_yes),
        "ece": jc.expected_calibration_error(bins),
        "failed_fraction": failed / n if n else math.nan,
        "unparseable_fraction": unparseable / n if n else math.nan,
        "bins": [asdict(b) for b in bins],
    }


def choice_scope(answers: Sequence[Answer]) -> dict[str, Any]:
    """CircularEval accuracy, single-rotation accuracy and position bias of choice questions."""
    from relbench.metrics.functional.judge import position_bias

    decided = [a.circular for a in answers if a.circular is not None]
    rotations = [(c, e) for a in answers for c, e in zip(a.chosen_letters, a.expected_letters)]
    answered = [(c, e) for c, e in rotations if c is not None]
    failed, unparseable = _failure_counts(
        a.error if c is None else None for a in answers for c in a.chosen_letters)
    n_letters = max((len(a.expected_letters) for a in answers), default=0)
    return {
        "n": len(answers),
        "n_decided": len(decided),
        "circular_accuracy": sum(decided) / len(decided) if decided else math.nan,
        "n_rotations": len(rotations),
        "rotation_accuracy": sum(c == e for c, e in answered) / len(answered) if answered else math.nan,
        "failed_fraction": failed / len(rotations) if rotations else math.nan,
        "unparseable_fraction": unparseable / len(rotations) if rotations else math.nan,
        "position_bias": position_bias([c for c, _ in answered], n_letters) if n_letters else {},
    }


def scopes(answers: Sequence[Answer]) -> dict[str, list[Answer]]:
    """Yes/no scopes in display order: all, by kind, by relation, by group, by label source."""
    yes_no = [a for a in answers if a.ask != "choice"]
    out: dict[str, list[Answer]] = {"all": yes_no}
    for kind in ("relation", "presence"):
        out[kind] = [a for a in yes_no if a.ask == kind]
    for key, prefix in (("relation", "relation:"), ("group", "group:"), ("label_source", "source:")):
        for value in dict.fromkeys(getattr(a, key) for a in yes_no):  # presence questions have no relation
            if value is not None:
                out[f"{prefix}{value}"] = [a for a in yes_no if getattr(a, key) == value]
    return {name: members for name, members in out.items() if members}


def notes(stats: Mapping[str, Any], answers: Sequence[Answer]) -> list[str]:
    """Plain sentences on what the numbers of the ``all`` scope and of multiple choice mean."""
    out = []
    answered = [a for a in answers if a.ask != "choice" and not a.failed and a.p_yes is not None]
    said = {bool(a.answer) for a in answered}
    if len(said) == 1 and answered:
        word = "yes" if said == {True} else "no"
        out.append(f"the judge answered {word} to every question: balanced accuracy 0.5 means it tells nothing apart; "
                   f"accuracy only repeats the share of {word} labels")
    if math.isnan(stats["auroc"]) and answered:
        out.append("AUROC undefined: the answered questions carry only one label")
    elif len({a.p_yes for a in answered}) == 1 and answered:
        out.append("P(yes) is the same for every question: AUROC is 0.5 by ties, it ranks nothing")
    if stats["failed_fraction"] and stats["failed_fraction"] > 0:
        kinds: dict[str, int] = {}
        for a in answers:
            if a.error is not None and a.ask != "choice":
                kinds[failure_kind(a.error)] = kinds.get(failure_kind(a.error), 0) + 1
        listed = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
        out.append(f"{sum(kinds.values())} yes/no answers failed ({listed}): left out of accuracy, AUROC and ECE")
    return out


def choice_notes(stats: Mapping[str, Any]) -> list[str]:
    shares = stats.get("position_bias") or {}
    for letter, share in shares.items():
        if share == 100.0:
            return [f"the judge chose {letter} in every answered rotation: pure position bias, CircularEval accuracy "
                    f"{_fmt(stats['circular_accuracy'])}"]
    return []


@dataclass
class JudgeCheck:
    """One judge's check: identity, settings, the set, statistics, answers."""

    identity: dict[str, Any]
    settings: dict[str, Any]
    set_info: dict[str, Any]
    scopes: dict[str, dict[str, Any]]
    choice: dict[str, dict[str, Any]]
    notes: list[str]
    answers: list[Answer]
    profile: str
    created: str

    def record(self) -> dict[str, Any]:
        """check.json's entry for this judge, also what the check store holds (no answers)."""
        return _json_safe({
            "schema": CHECK_SCHEMA,
            "created": self.created,
            "profile": self.profile,
            "identity": self.identity,
            "identity_key": identity_key(self.identity),
            "settings": self.settings,
            "set": self.set_info,
            "scopes": self.scopes,
            "choice": self.choice,
            "notes": self.notes,
        })


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return _nan_to_none(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def check_answers(answers: Sequence[Answer], settings: Mapping[str, Any], judge_set: JudgeSet, *, n_bins: int,
                  profile: str, created: str) -> JudgeCheck:
    stats = {name: yes_no_scope(members, n_bins) for name, members in scopes(answers).items()}
    choices = [a for a in answers if a.ask == "choice"]
    choice_stats: dict[str, dict[str, Any]] = {}
    if choices:
        choice_stats["all"] = choice_scope(choices)
        for relation in dict.fromkeys(a.relation for a in choices):
            choice_stats[f"relation:{relation}"] = choice_scope([a for a in choices if a.relation == relation])
    all_notes = notes(stats["all"], answers) if "all" in stats else []
    if choices:
        all_notes += choice_notes(choice_stats["all"])
    full = {**dict(settings), "template_version": templates.TEMPLATE_VERSION, "templates": templates.describe()}
    return JudgeCheck(
        identity=judge_identity(full), settings=full,
        set_info={"name": judge_set.name, "digest": judge_set.digest, "path": str(judge_set.path) if judge_set.path else None,
                  **judge_set.counts()},
        scopes=stats, choice=choice_stats, notes=all_notes, answers=list(answers), profile=profile, created=created,
    )


def agreement(a: JudgeCheck, b: JudgeCheck) -> dict[str, dict[str, Any]]:
    """Cohen's kappa of two judges' yes/no answers, overall and per scope, on questions both answered."""
    from relbench.metrics.functional.judge_check import cohen_kappa

    if len(a.answers) != len(b.answers):
        raise RelbenchError("judge check: the two judges were asked different question lists")
    by_scope_a, by_scope_b = scopes(a.answers), scopes(b.answers)
    out = {}
    for name, members_a in by_scope_a.items():
        pairs = [(x.answer, y.answer) for x, y in zip(members_a, by_scope_b[name])
                 if not x.failed and not y.failed and x.answer is not None and y.answer is not None]
        out[name] = {
            "n_both_answered": len(pairs),
            "agreement": sum(x == y for x, y in pairs) / len(pairs) if pairs else math.nan,
            "cohen_kappa": cohen_kappa([x for x, _ in pairs], [y for _, y in pairs]),
        }
    return out


# --------------------------------------------------------------------------------------------
# Output


SUMMARY_FIELDS = ("n", "n_answered", "n_yes_labels", "n_no_labels", "yes_answer_rate", "accuracy", "balanced_accuracy",
                  "auroc", "ece", "unparseable_fraction", "failed_fraction")
CHOICE_FIELDS = ("n", "n_decided", "circular_accuracy", "n_rotations", "rotation_accuracy", "unparseable_fraction",
                 "failed_fraction")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def judge_label(check: JudgeCheck) -> str:
    identity = check.identity
    revision = identity.get("revision") or "-"
    return f"{identity.get('judge_id')} (revision {revision}, {identity.get('dtype') or 'api'}, {identity['template_version']})"


def format_check(check: JudgeCheck) -> list[str]:
    """The lines ``relbench judge check`` prints for one judge."""
    info = check.set_info
    lines = [f"judge {judge_label(check)} on {info['name']} ({info['items']} images, {info['yes_no']} yes/no, {info['choice']} choice)"]
    header = f"  {'scope':<28}{'n':>5}{'acc':>8}{'bal_acc':>9}{'auroc':>8}{'ece':>8}{'unparse':>9}"
    lines.append(header)
    for name, stats in check.scopes.items():
        lines.append(f"  {name:<28}{stats['n']:>5}{_fmt(stats['accuracy']):>8}{_fmt(stats['balanced_accuracy']):>9}"
                     f"{_fmt(stats['auroc']):>8}{_fmt(stats['ece']):>8}{_fmt(stats['unparseable_fraction']):>9}")
    for name, stats in check.choice.items():
        bias = " ".join(f"{letter} {share:.0f}%" for letter, share in stats["position_bias"].items())
        lines.append(f"  choice {name}: CircularEval accuracy {_fmt(stats['circular_accuracy'])} ({stats['n']} questions), "
                     f"single rotations {_fmt(stats['rotation_accuracy'])}, position bias {bias or 'n/a'}, "
                     f"unparseable {_fmt(stats['unparseable_fraction'])}")
    lines += [f"  note: {note}" for note in check.notes]
    return lines


def save_check(output: Path, checks: Sequence[JudgeCheck], kappa: Mapping[str, Mapping[str, Any]] | None,
               store: Path | None = None) -> list[Path]:
    """Write the output folder's files and file each judge's record in the check store."""
    import pandas as pd

    from relbench.atomic import atomic_write_text
    from relbench.errors import output_errors
    from relbench.reports.leaderboard import save_csv

    output = Path(output)
    written: list[Path] = []
    document = {"schema": CHECK_SCHEMA, "judges": [c.record() for c in checks]}
    if kappa is not None:
        document["agreement"] = _json_safe(kappa)
    with output_errors(output):
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "check.json", json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    written.append(output / "check.json")

    summary, reliability, choice, answers = [], [], [], []
    for check in checks:
        judge = check.identity.get("judge_id")
        for name, stats in check.scopes.items():
            summary.append({"judge": judge, "scope": name, **{k: stats[k] for k in SUMMARY_FIELDS}})
            reliability += [{"judge": judge, "scope": name, **b} for b in stats["bins"]] if name == "all" else []
        for name, stats in check.choice.items():
            choice.append({"judge": judge, "scope": name, **{k: stats[k] for k in CHOICE_FIELDS},
                           **{f"share_{letter}": share for letter, share in stats["position_bias"].items()}})
        for a in check.answers:
            row = asdict(a)
            row["expected_letters"] = "".join(row["expected_letters"])
            row["chosen_letters"] = "".join(c or "?" for c in row["chosen_letters"])
            answers.append({"judge": judge, **row})
    tables = {"summary.csv": summary, "reliability.csv": reliability, "choice.csv": choice, "answers.csv": answers}
    if kappa is not None:
        tables["agreement.csv"] = [{"scope": name, **values} for name, values in kappa.items()]
    for name, rows in tables.items():
        if rows:
            written.append(save_csv(pd.DataFrame(rows), output / name))

    folder = store or store_dir()
    for check in checks:
        record = check.record()
        path = folder / record["identity_key"] / f"{check.set_info['digest'][:16]}.json"
        with output_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return written


# --------------------------------------------------------------------------------------------
# The command


@dataclass
class CheckRun:
    checks: list[JudgeCheck]
    kappa: dict[str, dict[str, Any]] | None
    written: list[Path]


def run_judge_check(
    judges: Sequence[str | None],
    judge_set: JudgeSet,
    data_root: Path,
    output: Path,
    *,
    profile: str = "tiny",
    device: str = "auto",
    judge_options: Mapping[str, Any] | None = None,
    n_bins: int = 10,
    use_cache: bool = True,
    echo: Callable[[str], None] = print,
) -> CheckRun:
    """Check each judge (a ``--model judge=`` value, None: the profile's default) on the set, print
    and save the results; with two judges also their agreement."""
    from datetime import datetime, timezone

    from relbench.metrics.relation_judge.cache import CachedJudge, JudgeCache
    from relbench.metrics.relation_judge.metric import build_judge
    from relbench.profiles import RunContext

    if not 1 <= len(judges) <= 2:
        raise RelbenchError(f"--model judge=...: expected one or two judges, got {len(judges)}")
    if not 1 <= n_bins <= 100:
        raise RelbenchError(f"--bins: expected 1 to 100 reliability bins, got {n_bins}")
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    checks = []
    for ref in judges:
        context = RunContext(profile=profile, device=device, model_overrides={"judge": ref} if ref else {},
                             judge_options=dict(judge_options or {}))
        judge = build_judge(context)
        cached = CachedJudge(judge, JudgeCache() if use_cache else None)
        echo(f"judge {judge.judge_id}: asking {judge_set.counts()['yes_no']} yes/no and {judge_set.counts()['choice']} choice questions")
        answers = ask_set(cached, judge_set, data_root)
        check = check_answers(answers, judge.settings(), judge_set, n_bins=n_bins, profile=profile, created=created)
        checks.append(check)
        for line in format_check(check):
            echo(line)
        if profile == "tiny" and not ref:
            echo("tiny profile: a random tiny judge, so these numbers only show that the check runs "
                 "(--profile full checks the real judge)")
    kappa = agreement(checks[0], checks[1]) if len(checks) == 2 else None
    if kappa is not None:
        overall = kappa["all"]
        echo(f"agreement of the two judges on {overall['n_both_answered']} yes/no questions: "
             f"{_fmt(overall['agreement'])}, Cohen's kappa {_fmt(overall['cohen_kappa'])}")
    written = save_check(output, checks, kappa)
    return CheckRun(checks, kappa, written)
