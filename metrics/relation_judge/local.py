"""A local chat VLM as relation judge, through transformers (VQAScore-style).

The prompt is the model's own chat template applied to one user turn (the image, then the
question) with the generation prompt added. The logits at the first generated position (no
generation; the prompt's image part encoded once per image, below); the softmax over the full vocabulary is summed over the token ids that spell
the answer (``relbench.metrics.functional.judge``):

* yes: ``"Yes"``, ``"yes"``, ``" Yes"``, ``" yes"``; no: the same spellings of "no". Only the
  spellings the tokenizer encodes as ONE token count (chat templates start the answer right
  after "assistant\n", so "Yes" is the usual first token; the spaced forms cover tokenizers that
  mark word starts); the ids found are recorded in ``settings()["answer_tokens"]``.
* multiple choice: per option letter, ``"A"`` and ``" A"`` (single-token spellings); the chosen
  option is the letter with the largest mass (the judge cannot answer outside the letters).

Models: ``full`` -> ``--model judge=ID_OR_PATH`` (default ``Qwen/Qwen2.5-VL-7B-Instruct``), any
chat VLM that ``AutoProcessor`` + ``AutoModelForImageTextToText`` load and whose processor has a
chat template; no dispatch on model names. ``tiny`` -> ``tiny_vlm(seed)``: a Qwen2.5-VL built from
a config with random weights and an offline byte-level BPE tokenizer (see ``tiny_vlm_tokenizer``).

One encoding per image (``first_token_logits``): every question about an image shares the chat
prompt up to and including the image (the "prefix"), so the processor, the vision tower and the
prefill of that prefix run once per image; each question's remaining tokens (the question, the end
of the user turn, the generation prompt) then run on a copy of the prefix's KV cache, the
questions of an image batched (right-padded; each row's logits read at its own last token). The
prefixes of the last ``PREFIX_MEMO_IMAGES`` images are kept, so that relation_mc's rotations reuse
the image relation_vqa encoded. Positions: Qwen2-VL-style M-RoPE gives text after an image
positions that depend on the image grid; they are computed with the model's own
``get_rope_index`` over the whole prompt, exactly as a full forward computes them, and passed
explicitly (the model's stored ``rope_deltas`` belong to the last prefill, not necessarily this
image's). Models without ``get_rope_index``, and chat templates that do not place the question
right after a special token, take one full forward per question (left-padded batches, so that
the last position of every row is its first generated position); ``settings()["encoding"]`` says
which. Both give the same logits up to float rounding (tests: max difference ~1e-7 in float32).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.metrics.loading import (
    batched,
    built_model_name,
    load_component,
    load_pretrained,
    model_source,
    resolve_revision,
)
from relbench.metrics.relation_judge import ChoiceAnswer, ChoiceQuestion, Judge, YesNoAnswer, YesNoQuestion
from relbench.profiles import FULL_MODELS, ModelRef, RunContext, torch_dtype

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MODEL_KEY = "judge"
DEFAULT_JUDGE = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_REVISION = "main"
DEFAULT_BATCH_SIZE = 4

YES_SPELLINGS = ("Yes", "yes", " Yes", " yes")
NO_SPELLINGS = ("No", "no", " No", " no")

SCORING = "softmax over the full vocabulary at the first generated position (one forward pass), float32"
PROMPT_FORMAT = "the model's chat template: one user turn (image, then question), generation prompt added"
ENCODING_SHARED = "image and chat prefix encoded once per image (KV cache); each question's tokens continue on a copy of it"
ENCODING_FULL = "one full forward per question (image encoded with each question)"
# Images whose encoded prefix (KV cache, on the model's device) is kept for later questions: the
# images of one scoring batch (the runner scores up to 16 at a time, each metric in turn). About
# 80 MB each for Qwen2.5-VL-7B in bfloat16 at 1024 px (1.4k prefix tokens).
PREFIX_MEMO_IMAGES = 16
# Stand-ins for the question when the chat template is split around it (see ``_prefix_split``).
_SENTINELS = ("RELBENCHQUESTIONSENTINELA", "RELBENCHQUESTIONSENTINELB")


def judge_ref(context: RunContext) -> ModelRef:
    """The judge model of this context: ``--model judge=...``, the tiny config, or the default.

    The default lives here until ``FULL_MODELS`` has a ``judge`` entry.
    """
    if context.is_tiny or MODEL_KEY in context.model_overrides or MODEL_KEY in FULL_MODELS:
        return context.model(MODEL_KEY)
    return ModelRef(MODEL_KEY, DEFAULT_JUDGE, DEFAULT_REVISION)


def single_token_ids(tokenizer: Any, spellings: Sequence[str]) -> dict[str, int]:
    """Each spelling that the tokenizer encodes as exactly one token -> that token's id."""
    found: dict[str, int] = {}
    for spelling in spellings:
        ids = tokenizer.encode(spelling, add_special_tokens=False)
        if len(ids) == 1:
            found[spelling] = int(ids[0])
    return found


# --------------------------------------------------------------------------------------------
# The tiny profile's VLM


# Qwen's chat format ("<|im_start|>role\n...<|im_end|>\n"), with the image as Qwen2-VL marks it.
# Written for the tiny model; a pretrained model brings its own template.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
# CLIP's merges are lower-case and mark word ends, not word starts; these make the answer words
# single tokens in every spelling the judge reads, as they are in real chat tokenizers.
TINY_EXTRA_MERGES = (("Y", "es"), ("N", "o"), ("Ġ", "Yes"), ("Ġ", "No"), ("Ġ", "yes"), ("Ġ", "no"))
# 28 px granularity (14 px patches merged 2 x 2); at most 56 x 56 px, i.e. 4 image tokens.
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 28 * 28, 56 * 56


@lru_cache(maxsize=1)
def _tiny_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    from relbench.tiny import _byte_alphabet, clip_bpe_files

    _, merges_path = clip_bpe_files()
    lines = merges_path.read_text(encoding="utf-8").splitlines()[1:]
    # A byte-level BPE (GPT-2 / Qwen style) from CLIP's merges: those that build word-final
    # pieces ("</w>") have no meaning without CLIP's end-of-word marker and are left out.
    merges = [tuple(line.split()) for line in lines if line and "</w>" not in line]
    vocab: dict[str, int] = {}
    for symbol in _byte_alphabet():
        vocab.setdefault(symbol, len(vocab))
    kept: list[tuple[str, str]] = []
    for left, right in [*merges, *TINY_EXTRA_MERGES]:
        if left + right not in vocab:
            vocab[left + right] = len(vocab)
            kept.append((left, right))
    for token in TINY_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return tuple(vocab.items()), tuple(kept)


def tiny_vlm_tokenizer() -> Any:
    """A Qwen2 byte-level BPE tokenizer built offline from the CLIP merges (~15k tokens) plus the
    special tokens Qwen2.5-VL's processor and chat format need."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _tiny_vocab_and_merges()
    tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), unk_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in TINY_SPECIAL_TOKENS])
    tokenizer.padding_side = "left"
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tiny VLM tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    return tokenizer


def tiny_vlm(seed: int = 0, max_pixels: int = TINY_MAX_PIXELS) -> tuple[Any, Any]:
    """(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor) with random weights (~2M params).

    Two text layers 64 wide (head dim 16, M-RoPE sections 2+3+3), a two-block vision tower 32
    wide (14 px patches, 2 x 2 merge), images of at most 56 x 56 px (``max_pixels``: more image
    tokens, e.g. for benchmarks with a real model's proportions). Scores are not meaningful.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from relbench.tiny import seeded

    tokenizer = tiny_vlm_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in TINY_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    with seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    pixels = dict(min_pixels=TINY_MIN_PIXELS, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=TINY_CHAT_TEMPLATE,
    )
    return model, processor


# --------------------------------------------------------------------------------------------
# The judge


def _folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of a model folder's files: changes when they do."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _pixel_limits(image_processor: Any) -> dict[str, Any]:
    """What the image processor resizes to (it moves the score): Qwen-style pixel bounds or size."""
    size = getattr(image_processor, "size", None)
    limits: dict[str, Any] = {}
    for name in ("min_pixels", "max_pixels", "patch_size", "merge_size"):
        value = getattr(image_processor, name, None)
        if isinstance(value, (int, float)):
            limits[name] = value
    if size is not None:
        try:  # a dict or transformers' SizeDict (iterates over its set fields)
            limits["size"] = {str(k): v for k, v in dict(size).items() if v is not None}
        except (TypeError, ValueError):
            limits["size"] = str(size)
    return limits


@dataclass
class _Prefix:
    """One image's encoded chat prefix: everything of the prompt before the question."""

    cache: Any  # the model's KV cache after the prefix; copied for each use, never extended
    input_ids: "torch.Tensor"  # (1, P) on the model's device
    rope_inputs: dict[str, "torch.Tensor"]  # what get_rope_index reads besides the ids (token types, grid)


class LocalVLMJudge(Judge):
    """Loads a chat VLM once and answers questions from first-position logits."""

    def __init__(
        self,
        context: RunContext,
        model: Any = None,
        *,
        dtype: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        self.device = context.torch_device()
        # bfloat16 on a GPU (a 7B model in float32 needs 30 GB); float32 on the CPU.
        self.dtype = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        torch_dtype_ = torch_dtype(self.dtype)  # refuse a bad dtype before loading anything
        if batch_size < 1:
            raise RelbenchError(f"judge batch_size: expected a positive integer, got {batch_size}")
        self.batch_size = batch_size
        self.seed: int | None = None
        self.requested_revision: str | None = None
        self._identity: str | None = None
        if model is not None:
            if not isinstance(model, (tuple, list)) or len(model) != 2:
                raise TypeError("a built judge is passed as (model, processor)")
            self.model, self.processor = model
            self.judge_id = built_model_name(self.model)
            self.revision = resolve_revision(self.model, None, None)
            where = f"judge model {self.judge_id!r}"
        else:
            ref = judge_ref(context)
            where = f"judge model {ref.id!r}"
            self.judge_id = ref.id
            self.requested_revision = ref.revision
            if ref.is_tiny:
                self.model, self.processor = tiny_vlm(seed=context.seed)
                self.seed = context.seed
                self.revision = None
            else:
                from transformers import AutoModelForImageTextToText, AutoProcessor

                source = model_source(ref)
                self.processor = load_component(AutoProcessor, ref, source)
                self._check_processor(where)
                self.model = load_pretrained(AutoModelForImageTextToText, ref, source, dtype=torch_dtype_)
                self.revision = resolve_revision(self.model, source, ref.revision)
                if self.revision and re.fullmatch(r"[0-9a-f]{40}", self.revision):
                    self._identity = f"{ref.id}@{self.revision}"
                elif Path(source).is_dir():
                    self._identity = f"{Path(source).resolve()}#{_folder_fingerprint(Path(source))}"
                else:
                    log.info("judge %s: revision %r is not a commit; answers are not cached on disk", ref.id, self.revision)
        self._check_processor(where)
        self.tokenizer = self.processor.tokenizer
        # Left padding: the last position of every row of a batch is its first generated position.
        self.tokenizer.padding_side = "left"
        self.yes_ids = single_token_ids(self.tokenizer, YES_SPELLINGS)
        self.no_ids = single_token_ids(self.tokenizer, NO_SPELLINGS)
        if not self.yes_ids or not self.no_ids:
            missing = "yes" if not self.yes_ids else "no"
            raise RelbenchError(
                f"{where}: the tokenizer spells no form of {missing!r} ({', '.join(map(repr, YES_SPELLINGS if missing == 'yes' else NO_SPELLINGS))}) "
                "as one token; is it a chat model's tokenizer?"
            )
        if set(self.yes_ids.values()) & set(self.no_ids.values()):
            raise RelbenchError(f"{where}: the tokenizer gives 'yes' and 'no' a common token id; is it a chat model's tokenizer?")
        vocab = self._vocab_size()
        if max([*self.yes_ids.values(), *self.no_ids.values()]) >= vocab:
            raise RelbenchError(f"{where}: the tokenizer's answer ids exceed the model's vocabulary of {vocab}; do they belong together?")
        self._letter_ids: dict[int, dict[str, int]] = {}
        forward_parameters = inspect.signature(self.model.forward).parameters
        self._forward_keeps_last = "logits_to_keep" in forward_parameters
        # transformers 5.x renames past_key_values to cache (both accepted until 5.40).
        self._cache_arg = "cache" if "cache" in forward_parameters else "past_key_values"
        self._rope = self._rope_index()
        self._split = self._prefix_split()
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()  # image digest -> prefix, least recent first
        self.model.to(device=self.device, dtype=torch_dtype_)
        self.model.eval()

    def _check_processor(self, where: str) -> None:
        if getattr(self.processor, "image_processor", None) is None or getattr(self.processor, "tokenizer", None) is None:
            raise RelbenchError(f"{where}: the processor has no image processor or no tokenizer; is it a chat VLM (image-text-to-text)?")
        if not getattr(self.processor, "chat_template", None):
            raise RelbenchError(f"{where}: the processor has no chat template (chat_template.jinja); the judge needs a chat model")

    def _vocab_size(self) -> int:
        head = self.model.get_output_embeddings()
        if head is not None:
            return int(head.weight.shape[0])
        return int(self.model.config.get_text_config().vocab_size)

    # --- questions ------------------------------------------------------------------------

    def prompt(self, question: str) -> str:
        """The chat-formatted prompt text (the processor expands its image placeholder)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _rope_index(self) -> Any:
        """The model's M-RoPE position function, when it has one that reads token types and grids."""
        rope_index = getattr(getattr(self.model, "model", None), "get_rope_index", None)
        if not callable(rope_index):
            return None
        parameters = inspect.signature(rope_index).parameters
        return rope_index if {"input_ids", "mm_token_type_ids", "image_grid_thw"} <= set(parameters) else None

    def _prefix_split(self) -> tuple[str, str] | None:
        """(head, tail) with ``prompt(q) == head + q + tail`` for every question, when an image's
        prefix can be shared: the model computes its positions with ``get_rope_index``, the template
        puts the question verbatim between two fixed parts, and the head ends with an added token
        (so the question's tokens do not depend on what precedes it). None: one forward per question."""
        if self._rope is None:
            return None
        rendered = [self.prompt(sentinel) for sentinel in _SENTINELS]
        if any(text.count(sentinel) != 1 for text, sentinel in zip(rendered, _SENTINELS)):
            return None
        parts = [text.split(sentinel) for text, sentinel in zip(rendered, _SENTINELS)]
        if parts[0] != parts[1]:
            return None
        head, tail = parts[0]
        head_ids = self.tokenizer(head, add_special_tokens=True)["input_ids"]
        if not head_ids or head_ids[-1] not in self.tokenizer.added_tokens_decoder:
            return None
        whole = self.tokenizer(head + _SENTINELS[0] + tail, add_special_tokens=True)["input_ids"]
        question = self.tokenizer(_SENTINELS[0] + tail, add_special_tokens=False)["input_ids"]
        return (head, tail) if whole == head_ids + question else None

    @property
    def shares_prefix(self) -> bool:
        """Whether each image is encoded once for all its questions (else once per question)."""
        return self._split is not None

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            name: (value.to(self.device, dtype=self.model.dtype) if value.is_floating_point() else value.to(self.device))
            if hasattr(value, "to") else value
            for name, value in inputs.items()
        }

    def first_token_logits(self, images: Sequence[Any], questions: Sequence[str]) -> "torch.Tensor":
        """(N, V) float32 logits at the first generated position, on the CPU."""
        import torch

        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        with torch.inference_mode():
            if self._split is None:
                return self._full_logits(images, questions)
            from relbench.metrics.embedding_cache import image_digest

            by_image: dict[str, list[int]] = {}  # digest -> question indices, in order
            first_image: dict[str, Any] = {}
            for i, image in enumerate(images):
                digest = image_digest(image)
                by_image.setdefault(digest, []).append(i)
                first_image.setdefault(digest, image)
            head, tail = self._split
            rows: list["torch.Tensor | None"] = [None] * len(questions)
            for digest, indices in by_image.items():
                prefix = self._prefix(digest, first_image[digest], head)
                for chunk in batched(indices, self.batch_size):
                    for i, logits in zip(chunk, self._continue(prefix, [questions[i] for i in chunk], tail)):
                        rows[i] = logits
        if not rows:
            return torch.empty(0, self._vocab_size())
        return torch.stack([row for row in rows if row is not None])

    def _prefix(self, digest: str, image: Any, head: str) -> _Prefix:
        """The image's encoded prefix: from the memo, else encoded now (the least recent evicted)."""
        prefix = self._prefixes.get(digest)
        if prefix is None:
            prefix = self._prefixes[digest] = self._encode_prefix(image, head)
        self._prefixes.move_to_end(digest)
        while len(self._prefixes) > PREFIX_MEMO_IMAGES:
            self._prefixes.popitem(last=False)
        return prefix

    def _encode_prefix(self, image: Any, head: str) -> _Prefix:
        """Processor, vision tower and prefill of the prompt up to the question (``head``), once."""
        inputs = self.processor(text=[head], images=[[image.convert("RGB")]], return_tensors="pt")
        inputs = self._to_device(dict(inputs))
        output = self.model(**inputs, use_cache=True, **({"logits_to_keep": 1} if self._forward_keeps_last else {}))
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        if cache is None or "mm_token_type_ids" not in inputs:
            raise RuntimeError(f"judge {self.judge_id!r}: the prefix forward returned no KV cache or the processor no mm_token_type_ids")
        rope_inputs = {name: inputs[name] for name in ("mm_token_type_ids", "image_grid_thw") if name in inputs}
        return _Prefix(cache=cache, input_ids=inputs["input_ids"], rope_inputs=rope_inputs)

    def _continue(self, prefix: _Prefix, questions: Sequence[str], tail: str) -> "torch.Tensor":
        """(n, V) float32 CPU logits of ``questions`` (each followed by ``tail``, the rest of the
        prompt) asked after ``prefix``, in one forward.

        Rows are right-padded: a real token never attends to the pads after it, and each row's
        logits are read at its own last token. Positions are those ``get_rope_index`` gives the
        whole prompt (prefix + question), as a full forward would compute them.
        """
        import torch

        tokens = [self.tokenizer(question + tail, add_special_tokens=False)["input_ids"] for question in questions]
        n, length, prefix_length = len(tokens), max(len(t) for t in tokens), prefix.input_ids.shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((n, length), pad, dtype=prefix.input_ids.dtype, device=self.device)
        mask = torch.zeros(n, prefix_length + length, dtype=torch.long, device=self.device)
        mask[:, :prefix_length] = 1
        for row, row_tokens in enumerate(tokens):
            ids[row, : len(row_tokens)] = torch.tensor(row_tokens, device=self.device)
            mask[row, prefix_length : prefix_length + len(row_tokens)] = 1
        whole = torch.cat([prefix.input_ids.expand(n, -1), ids], dim=1)
        types = prefix.rope_inputs["mm_token_type_ids"]
        rope_inputs = {
            **prefix.rope_inputs,
            "mm_token_type_ids": torch.cat([types.expand(n, -1), torch.zeros(n, length, dtype=types.dtype, device=self.device)], dim=1),
        }
        if "image_grid_thw" in rope_inputs:  # one image per row
            rope_inputs["image_grid_thw"] = rope_inputs["image_grid_thw"].repeat(n, 1)
        positions, _ = self._rope(input_ids=whole, **rope_inputs)
        cache = copy.deepcopy(prefix.cache)  # the memo's cache stays the prefix's
        if n > 1:
            cache.batch_repeat_interleave(n)
        last = torch.tensor([len(t) - 1 for t in tokens], device=self.device)
        keep = torch.unique(last)  # sorted; the positions whose logits are needed
        extra = {"logits_to_keep": keep} if self._forward_keeps_last else {}
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions[..., prefix_length:],
            use_cache=True, **{self._cache_arg: cache}, **extra,
        ).logits
        column = torch.searchsorted(keep, last) if self._forward_keeps_last else last
        return logits[torch.arange(n, device=self.device), column].float().cpu()

    def _full_logits(self, images: Sequence[Any], questions: Sequence[str]) -> "torch.Tensor":
        """One full forward per question (left-padded batches): for models without a shared prefix."""
        import torch

        parts = []
        for batch in batched(list(zip(images, questions)), self.batch_size):
            inputs = self.processor(
                text=[self.prompt(question) for _, question in batch],
                # One list of images per prompt: the form every transformers VLM processor
                # reads unambiguously (a flat list means something else to some of them).
                images=[[image.convert("RGB")] for image, _ in batch],
                padding=True, return_tensors="pt",
            )
            mask = inputs.get("attention_mask")
            if mask is not None and not bool(mask[:, -1].all()):
                raise RuntimeError("judge: the processor padded on the right; the last position is not the answer position")
            extra = {"logits_to_keep": 1} if self._forward_keeps_last else {}
            logits = self.model(**self._to_device(dict(inputs)), **extra).logits
            parts.append(logits[:, -1].float().cpu())
        return torch.cat(parts) if parts else torch.empty(0, self._vocab_size())

    def yes_no(self, questions: Sequence[YesNoQuestion]) -> list[YesNoAnswer]:
        from relbench.metrics.functional.judge import yes_no_probabilities

        if not questions:
            return []
        logits = self.first_token_logits([q.image for q in questions], [q.text for q in questions])
        p_yes, p_no, normalized = yes_no_probabilities(logits, list(self.yes_ids.values()), list(self.no_ids.values()))
        return [
            YesNoAnswer(p_yes=float(y), p_no=float(n), normalized=float(z), source="logits")
            for y, n, z in zip(p_yes, p_no, normalized)
        ]

    def letter_ids(self, index: int) -> dict[str, int]:
        """Single-token spellings of option letter ``index`` ("A", " A")."""
        from relbench.metrics.functional.judge import option_letter

        if index not in self._letter_ids:
            letter = option_letter(index)
            found = single_token_ids(self.tokenizer, (letter, f" {letter}"))
            if not found:
                raise RelbenchError(f"judge model {self.judge_id!r}: the tokenizer has no single token for option letter {letter!r}")
            self._letter_ids[index] = found
        return self._letter_ids[index]

    def choice(self, questions: Sequence[ChoiceQuestion]) -> list[ChoiceAnswer]:
        from relbench.metrics.functional.judge import option_probabilities

        answers: list[ChoiceAnswer] = []
        if not questions:
            return answers
        logits = self.first_token_logits([q.image for q in questions], [q.text for q in questions])
        for row, question in zip(logits, questions):
            id_sets = [list(self.letter_ids(i).values()) for i in range(question.n_options)]
            probs = option_probabilities(row.unsqueeze(0), id_sets)[0]
            answers.append(ChoiceAnswer(choice=int(probs.argmax()), probabilities=tuple(float(p) for p in probs), source="logits"))
        return answers

    # --- records --------------------------------------------------------------------------

    def identity(self) -> str | None:
        return None if self._identity is None else f"local:{self._identity}:{self.dtype}"

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "judge": "local",
            "judge_id": self.judge_id,
            "model_class": f"transformers.{type(self.model).__name__}",
            "requested_revision": self.requested_revision,
            "revision": self.revision,
            "dtype": self.dtype,
            "scoring": SCORING,
            "prompt_format": PROMPT_FORMAT,
            "encoding": ENCODING_SHARED if self.shares_prefix else ENCODING_FULL,
            "answer_tokens": {"yes": dict(self.yes_ids), "no": dict(self.no_ids)},
            "option_tokens": "single-token spellings of 'A' and ' A' (likewise B, C, ...); the letter with the largest mass is chosen",
            "image_processor": {"class": type(self.processor.image_processor).__name__, **_pixel_limits(self.processor.image_processor)},
            "padding": "left",
        }
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings

