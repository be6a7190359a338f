"""Per-subject identity, presence, confusion (swap / blend) and CLIP-R.

* The pure functions against closed forms (hand-made embeddings, score matrices and boxes).
* The analysis end to end on collages made by the reference-collage method from scikit-image
  photos, with a stand-in detector that knows where the subjects are: the references are the exact
  pixels of the correct collage, so identity is 100 and the swap / blend margins are 100 minus a
  cosine computed here, independently, through the embedders.
* The tiny OWLv2 detector end to end (shapes, ranges, determinism, batching), loading a saved one
  from a folder, and one-line errors for models that cannot be loaded.
* CLIP-R against a manual computation through the CLIP embedder.
"""

from __future__ import annotations

import gc
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network (see conftest)

import numpy as np
import pytest
import torch
from PIL import Image

from relbench.errors import RelbenchError
from relbench.metrics.base import ScoringSample
from relbench.metrics.clip import CLIPTScore, shared_clip_embedder
from relbench.metrics.clip_r import CLIPRScore
from relbench.metrics.dino import DINOScore
from relbench.metrics.functional.identity import (
    assign_by_detector,
    box_iou,
    confusion,
    crop_bounds,
    identity_scores,
    noun_groups,
    owl_boxes_to_pixels,
    presence_fraction,
    refine_within_noun_groups,
    select_candidates,
    subject_similarity,
)
from relbench.metrics.identity import metric as identity_module
from relbench.metrics.identity.detector import DetectorPreprocess, Detections, OpenVocabularyDetector, tiny_owlv2
from relbench.metrics.identity.metric import (
    BlendScore,
    ConfusionScore,
    IdentityAnalyzer,
    IdentityCLIPScore,
    IdentityDINOScore,
    IdentitySettings,
    PresenceScore,
    SwapScore,
)
from relbench.profiles import RunContext

CPU = dict(device="cpu")
ALL_IDENTITY_METRICS = (IdentityCLIPScore, IdentityDINOScore, PresenceScore, ConfusionScore, SwapScore, BlendScore)


def cos100(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(100.0 * a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------
# Pure functions: similarity, identity, confusion


E1, E2, E3 = torch.eye(3)


def test_identical_crops_give_identity_100_and_no_confusion():
    s = subject_similarity([E1, E2], [E1[None], E2[None]])
    assert s.tolist() == [pytest.approx([100.0, 0.0], abs=1e-5), pytest.approx([0.0, 100.0], abs=1e-5)]
    assert identity_scores(s, [True, True]).tolist() == pytest.approx([100.0, 100.0], abs=1e-5)
    c = confusion(s, [True, True])
    assert c.value == 0.0 and not c.swapped and not c.blended
    assert c.best_match == [0, 1] and c.leak.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_swapped_crops_are_a_swap_not_a_blend():
    s = subject_similarity([E2, E1], [E1[None], E2[None]])  # crop 0 shows subject 1 and vice versa
    c = confusion(s, [True, True])
    assert c.swapped and not c.blended
    assert c.swap_cycles == [[0, 1]] and c.best_match == [1, 0]
    assert c.leak.tolist() == [pytest.approx([0.0, 100.0], abs=1e-5), pytest.approx([100.0, 0.0], abs=1e-5)]
    assert c.value == pytest.approx(100.0, abs=1e-5)
    assert identity_scores(s, [True, True]).tolist() == pytest.approx([0.0, 0.0], abs=1e-5)


def test_one_subject_shown_twice_is_a_blend_not_a_swap():
    diagonal = (E1 + E2) / math.sqrt(2)  # 45 degrees from both: cos 1/sqrt(2)
    s = subject_similarity([E1, E1], [E1[None], torch.stack([E2, diagonal])])
    # Row 1 (crop of subject 1 showing subject 0): S[1, 0] = 100, S[1, 1] = mean(0, 70.71).
    assert s[1].tolist() == pytest.approx([100.0, 100 / math.sqrt(2) / 2], abs=1e-4)
    c = confusion(s, [True, True])
    assert c.blended and not c.swapped
    assert c.blend_groups == {0: [0, 1]} and c.best_match == [0, 0]
    assert c.leak_per_subject == pytest.approx([0.0, 100 - 100 / math.sqrt(2) / 2], abs=1e-4)
    assert c.value == pytest.approx((100 - 100 / math.sqrt(2) / 2) / 2, abs=1e-4)


def test_missing_subject_has_identity_0_and_no_confusion_of_its_own():
    s = subject_similarity([E1, None], [E1[None], E2[None]])
    assert s.tolist() == [pytest.approx([100.0, 0.0], abs=1e-5), [0.0, 0.0]]  # zero-embedding row
    assert identity_scores(s, [True, False]).tolist() == pytest.approx([100.0, 0.0], abs=1e-5)
    assert presence_fraction([True, False]) == 0.5 and presence_fraction([False, False]) == 0.0
    c = confusion(s, [True, False])
    assert c.best_match == [0, None] and c.leak_per_subject == [0.0, None]
    assert c.value == 0.0 and not c.swapped and not c.blended
    none = confusion(np.zeros((2, 2)), [False, False])  # nothing detected: defined, 0
    assert none.value == 0.0 and none.best_match == [None, None] and not none.swapped and not none.blended


def test_crop_resembling_a_missing_subject_leaks_but_is_neither_swap_nor_blend():
    s = subject_similarity([E2, None], [E1[None], E2[None]])  # subject 0's crop looks like absent subject 1
    c = confusion(s, [True, False])
    assert c.best_match == [1, None] and c.leak[0, 1] == pytest.approx(100.0, abs=1e-5)
    assert c.value == pytest.approx(100.0, abs=1e-5) and not c.swapped and not c.blended


def test_three_subject_rotation_and_margin():
    refs = [E1[None], E2[None], E3[None]]
    rotated = confusion(subject_similarity([E2, E3, E1], refs), [True] * 3)
    assert rotated.swap_cycles == [[0, 1, 2]] and not rotated.blended
    # A crop only slightly closer to another subject: a best match without margin, none with it.
    s = np.array([[60.0, 62.0, 10.0], [0.0, 90.0, 0.0], [0.0, 0.0, 90.0]])
    assert confusion(s, [True] * 3).blend_groups == {1: [0, 1]}
    with_margin = confusion(s, [True] * 3, margin=5.0)
    assert with_margin.best_match == [0, 1, 2] and not with_margin.blended
    assert with_margin.leak[0, 1] == pytest.approx(2.0) and with_margin.value == pytest.approx(2.0 / 3)


# ------------------------------------------------------------------------------------------
# Pure functions: detector assignment, boxes


def test_assignment_maximises_detected_subjects_then_score():
    # Greedy (subject 0 takes its best box 0) would leave subject 1 with 0.1 < threshold: missing.
    scores = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert assign_by_detector(scores, threshold=0.3) == [1, 0]
    assert assign_by_detector(scores, threshold=0.95) == [None, None]
    assert assign_by_detector(np.array([[0.2, 0.5]]), threshold=0.3) == [None, 0]  # one box: one subject
    assert assign_by_detector(np.zeros((0, 2)), threshold=0.1) == [None, None]
    # Two subjects with the same noun (equal columns) never share a box.
    same = np.array([[0.7, 0.7], [0.6, 0.6], [0.2, 0.2]])
    assert sorted(assign_by_detector(same, threshold=0.5)) == [0, 1]


def test_same_noun_subjects_take_the_crop_that_resembles_them():
    assert noun_groups(["Dog", "cat", " dog "]) == [[0, 2]]
    s = np.array([[10.0, 5.0, 90.0], [0.0, 80.0, 0.0], [95.0, 0.0, 20.0]])  # crops of 0 and 2 exchanged
    assert refine_within_noun_groups(s, [True, True, True], [[0, 2]]) == [2, 1, 0]
    assert refine_within_noun_groups(s, [True, True, False], [[0, 2]]) == [0, 1, 2]  # one present: nothing to do


def test_owl_boxes_map_to_pixels_of_the_unpadded_image():
    # A 200 x 100 image is padded to 200 x 200: the whole image is the top half of the square.
    whole = torch.tensor([[0.5, 0.25, 1.0, 0.5]])
    assert owl_boxes_to_pixels(whole, 200, 100).tolist() == [[0.0, 0.0, 200.0, 100.0]]
    assert owl_boxes_to_pixels(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), 200, 100, padded=False).tolist() == [[0.0, 0.0, 200.0, 100.0]]
    # Beyond the image (the padding, or outside the square): clipped.
    assert owl_boxes_to_pixels(torch.tensor([[0.75, 0.75, 0.5, 0.5]]), 200, 100).tolist() == [[100.0, 100.0, 200.0, 100.0]]
    assert crop_bounds((100.0, 100.0, 200.0, 100.0), 200, 100) == (100, 99, 200, 100)  # empty box: 1 pixel high
    assert crop_bounds((10.2, 5.7, 20.1, 30.0), 200, 100) == (10, 5, 21, 30)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3) and box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_candidates_nms_is_per_query():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.5, 0.0, 10.5, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7], [0.3, 0.05]])
    # Query 0 keeps box 0 (box 1 overlaps it) and box 3; query 1 keeps box 2 although it overlaps box 0.
    assert select_candidates(scores, boxes, top_k=4, iou_threshold=0.5) == [0, 2, 3]
    assert select_candidates(scores, boxes, top_k=1, iou_threshold=0.5) == [0, 2]


# ------------------------------------------------------------------------------------------
# The analysis on reference collages, with a detector that knows the layout

SIZE = 128
LAYOUT = ((0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75))
PIXEL_LAYOUT = ((0.0, 32.0, 64.0, 96.0), (64.0, 32.0, 128.0, 96.0))
SUBJECTS = ("astronaut", "cat")


class LayoutDetector:
    """Stands in for OWLv2: the box of the k-th layout slot is found for the k-th noun of the
    image with score 0.9 (0 for other nouns); nouns in ``missing`` are not found."""

    def __init__(self, missing: tuple[str, ...] = (), order: tuple[int, ...] = (0, 1)):
        self.missing, self.order = missing, order

    def detect(self, images, nouns):
        out = []
        for image_nouns in nouns:
            found = [k for k in self.order if image_nouns[k] not in self.missing]
            scores = np.array([[0.9 if image_nouns[q] == image_nouns[k] else 0.0 for q in range(len(image_nouns))] for k in found])
            out.append(Detections(
                boxes=np.array([PIXEL_LAYOUT[k] for k in found], dtype=np.float64).reshape(-1, 4),
                scores=scores.reshape(-1, len(image_nouns)),
                best=np.array([0.9 if n not in self.missing else 0.0 for n in image_nouns]),
            ))
        return out

    def settings(self):
        return {"model": "layout"}


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    import skimage.data

    return {"astronaut": Image.fromarray(skimage.data.astronaut()).convert("RGB"),
            "cat": Image.fromarray(skimage.data.chelsea()).convert("RGB")}


def collage(first: Image.Image, second: Image.Image) -> Image.Image:
    from relbench.method import GenerationRequest, SubjectInput
    from relbench.methods.reference_collage.method import ReferenceCollage, ReferenceCollageSettings

    method = ReferenceCollage(RunContext(profile="tiny", **CPU), ReferenceCollageSettings(fit="stretch"))
    subjects = tuple(SubjectInput(sid, sid, (image,), box) for sid, image, box in zip(SUBJECTS, (first, second), LAYOUT))
    request = GenerationRequest("c", "an astronaut hugging a cat", "hugging", subjects, seed=0, width=SIZE, height=SIZE)
    return method.generate([request])[0]


@pytest.fixture(scope="module")
def collages(photos) -> dict[str, Image.Image]:
    a, c = photos["astronaut"], photos["cat"]
    return {"correct": collage(a, c), "swapped": collage(c, a), "astronaut twice": collage(a, a)}


@pytest.fixture(scope="module")
def references(collages) -> dict[str, Image.Image]:
    """The exact pixels each subject has in the correct collage."""
    return {sid: collages["correct"].crop(tuple(int(v) for v in box)) for sid, box in zip(SUBJECTS, PIXEL_LAYOUT)}


def case(image: Image.Image, references, nouns=SUBJECTS) -> ScoringSample:
    return ScoringSample("c", image, "an astronaut hugging a cat", "hugging", SUBJECTS, tuple(nouns),
                         tuple((references[sid],) for sid in SUBJECTS), boxes=LAYOUT)


@pytest.fixture(scope="module")
def context() -> RunContext:
    return RunContext(profile="tiny", **CPU)


@pytest.fixture(scope="module")
def cross_similarity(context, references) -> dict[str, float]:
    """100 cos(astronaut reference, cat reference) per space, computed here through the embedders."""
    images = [references["astronaut"], references["cat"]]
    clip = shared_clip_embedder(context).embed_images(images).numpy()
    dino = DINOScore(context).embed_images(images).numpy()
    out = {"clip": cos100(clip[0], clip[1]), "dino": cos100(dino[0], dino[1])}
    assert max(out.values()) < 99.0  # the two subjects are told apart, or the test says nothing
    return out


def score_all(context, detector, sample) -> dict[str, object]:
    analyzer = IdentityAnalyzer(context, detector=detector)
    return {cls.name: cls(context, analyzer=analyzer).score([sample])[0] for cls in ALL_IDENTITY_METRICS}


def test_correct_collage_scores_identity_100_and_no_confusion(context, collages, references):
    r = score_all(context, LayoutDetector(), case(collages["correct"], references))
    assert r["identity_clip"].details == pytest.approx({"astronaut": 100.0, "cat": 100.0}, abs=1e-3)
    assert r["identity_dino"].value == pytest.approx(100.0, abs=1e-3)
    assert r["presence"].value == 1.0
    assert r["presence"].details["subjects"]["cat"] == {
        "present": True, "score": 0.9, "best_score": 0.9, "box": [64.0, 32.0, 128.0, 96.0], "layout_iou": 1.0}
    assert (r["confusion"].value, r["swap"].value, r["blend"].value) == (0.0, 0.0, 0.0)
    assert r["confusion"].details["best_match"] == {"astronaut": "astronaut", "cat": "cat"}


def test_swapped_collage_is_a_swap(context, collages, references, cross_similarity):
    r = score_all(context, LayoutDetector(), case(collages["swapped"], references))
    x = cross_similarity
    assert r["swap"].value == 1.0 and r["blend"].value == 0.0
    assert r["swap"].details == {"space": "dino", "cycles": [["astronaut", "cat"]]}
    # Each crop is the other subject's reference: S[i, j] = 100, S[i, i] = x, leak 100 - x.
    assert r["confusion"].value == pytest.approx(100.0 - x["dino"], abs=1e-3)
    assert r["confusion"].details["leak"]["cat"]["astronaut"] == pytest.approx(100.0 - x["dino"], abs=1e-3)
    assert r["confusion"].details["by_space"]["clip"]["value"] == pytest.approx(100.0 - x["clip"], abs=1e-3)
    assert r["identity_clip"].details == pytest.approx({"astronaut": x["clip"], "cat": x["clip"]}, abs=1e-3)


def test_one_subject_pasted_twice_is_a_blend(context, collages, references, cross_similarity):
    r = score_all(context, LayoutDetector(), case(collages["astronaut twice"], references))
    x = cross_similarity["dino"]
    assert r["blend"].value == 1.0 and r["swap"].value == 0.0
    assert r["blend"].details["groups"] == {"astronaut": ["astronaut", "cat"]}
    assert r["identity_dino"].details == pytest.approx({"astronaut": 100.0, "cat": x}, abs=1e-3)
    assert r["confusion"].value == pytest.approx((0.0 + (100.0 - x)) / 2, abs=1e-3)


def test_missing_subject_counts_0_in_identity_and_is_recorded(context, collages, references):
    r = score_all(context, LayoutDetector(missing=("cat",)), case(collages["correct"], references))
    assert r["presence"].value == 0.5
    assert r["presence"].details["subjects"]["cat"] == {"present": False, "score": None, "best_score": 0.0, "box": None, "layout_iou": None}
    assert r["presence"].details["threshold"] == 0.1
    assert r["identity_clip"].details == pytest.approx({"astronaut": 100.0, "cat": 0.0}, abs=1e-3)
    assert r["identity_clip"].value == pytest.approx(50.0, abs=1e-3)
    assert (r["confusion"].value, r["swap"].value, r["blend"].value) == (0.0, 0.0, 0.0)
    assert set(r["confusion"].details["leak"]) == {"astronaut"}
    nothing = score_all(context, LayoutDetector(missing=SUBJECTS), case(collages["correct"], references))
    assert {name: result.value for name, result in nothing.items()} == {
        "identity_clip": 0.0, "identity_dino": 0.0, "presence": 0.0, "confusion": 0.0, "swap": 0.0, "blend": 0.0}


def test_same_noun_subjects_are_matched_by_similarity(context, collages, references):
    # Both subjects are a "thing" and the detector lists the boxes in reverse order: the detector
    # cannot tell them apart, the similarity can, so neither a swap nor lost identity follows.
    sample = case(collages["correct"], references, nouns=("thing", "thing"))
    r = score_all(context, LayoutDetector(order=(1, 0)), sample)
    assert r["identity_dino"].details == pytest.approx({"astronaut": 100.0, "cat": 100.0}, abs=1e-3)
    assert r["presence"].details["subjects"]["astronaut"]["box"] == [0.0, 32.0, 64.0, 96.0]
    assert r["presence"].details["subjects"]["astronaut"]["layout_iou"] == 1.0
    assert r["swap"].value == 0.0


def test_user_errors_in_samples_are_one_line(context, collages, references):
    analyzer = IdentityAnalyzer(context, detector=LayoutDetector())
    a = references["astronaut"]
    bad = [
        (ScoringSample("c7", a, "p", "r", ("x", "x"), ("dog", "dog"), ((a,), (a,))), "case c7: a subject appears twice"),
        (ScoringSample("c8", a, "p", "r", ("x", "y"), ("dog", " "), ((a,), (a,))), "case c8: subject 'y' has an empty class noun"),
        (ScoringSample("c9", a, "p", "r", ("x", "y"), ("dog", "cat"), ((a,), ())), "case c9: subject 'y' has no reference images"),
    ]
    for sample, message in bad:
        with pytest.raises(RelbenchError, match=message) as info:
            analyzer.analyze([sample])
        assert "\n" not in str(info.value)
    with pytest.raises(RelbenchError, match="identity.space"):
        IdentitySettings(space="siglip").check()
    with pytest.raises(RelbenchError, match="identity.threshold"):
        PresenceScore(context, threshold=1.5)


# ------------------------------------------------------------------------------------------
# The tiny OWLv2 detector


def test_tiny_owlv2_detects_deterministically(photos, collages):
    images = [photos["astronaut"], photos["cat"], collages["correct"]]
    nouns = [("astronaut", "cat"), ("cat",), ("astronaut", "cup of coffee", "cat")]
    detector = OpenVocabularyDetector(RunContext(profile="tiny", **CPU), batch_size=2)  # 3 images: 2 batches
    found = detector.detect(images, nouns)
    for image, image_nouns, d in zip(images, nouns, found):
        q = len(image_nouns)
        assert d.boxes.shape[1] == 4 and d.scores.shape == (d.boxes.shape[0], q) and d.best.shape == (q,)
        assert 1 <= d.boxes.shape[0] <= detector.top_k * q  # at least the best box of each query
        assert ((d.scores >= 0) & (d.scores <= 1)).all() and (d.best >= d.scores.max(axis=0) - 1e-7).all()
        assert (d.boxes[:, 0] <= d.boxes[:, 2]).all() and (d.boxes[:, 1] <= d.boxes[:, 3]).all()
        assert (d.boxes >= 0).all() and (d.boxes[:, [0, 2]] <= image.width).all() and (d.boxes[:, [1, 3]] <= image.height).all()
    # Same seed, separately built, one image per forward: the same boxes and scores; the queries
    # of other images in the batch do not change an image's scores.
    again = OpenVocabularyDetector(RunContext(profile="tiny", **CPU), batch_size=1).detect(images, nouns)
    for d, e in zip(found, again):
        assert np.array_equal(d.boxes, e.boxes) or np.allclose(d.boxes, e.boxes, atol=1e-4)
        assert np.allclose(d.scores, e.scores, atol=1e-5)
    other_seed = OpenVocabularyDetector(RunContext(profile="tiny", seed=1, **CPU)).detect(images[:1], nouns[:1])[0]
    assert not np.allclose(other_seed.best, found[0].best)


def test_detector_preprocessing_pads_bottom_right_with_grey():
    prep = DetectorPreprocess(size=(16, 16), pad=True, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    image = Image.new("RGB", (32, 16), (255, 255, 255))  # wide: padded below to 32 x 32
    pixels = prep([image])[0]
    assert pixels.shape == (3, 16, 16)
    white = torch.tensor([(1 - 0.5) / 0.5, (1 - 0.25) / 0.25, 1.0])
    grey = torch.tensor([(0.5 - 0.5) / 0.5, (0.5 - 0.25) / 0.25, 0.5])
    assert torch.allclose(pixels[:, :7, :], white[:, None, None].expand(3, 7, 16), atol=1e-5)  # top half: the image
    assert torch.allclose(pixels[:, 9:, :], grey[:, None, None].expand(3, 7, 16), atol=1e-5)  # bottom half: padding
    assert prep.describe()["pad_to_square"] == {"side": "bottom/right", "value": 0.5}


def test_identity_metrics_with_tiny_owlv2_end_to_end(collages, references):
    context = RunContext(profile="tiny", **CPU)
    metrics = [cls(context) for cls in ALL_IDENTITY_METRICS]
    assert len({id(m.analyzer) for m in metrics}) == 1  # one detector, one analysis for all six
    forwards = []
    metrics[0].analyzer.detector.model.register_forward_hook(lambda *args: forwards.append(1))
    sample = case(collages["correct"], references)
    results = {m.name: m.score([sample])[0] for m in metrics}
    assert len(forwards) == 1
    for m in metrics:
        low, high = m.value_range
        assert low <= results[m.name].value <= high
    subjects = results["presence"].details["subjects"]
    best = [subjects[sid]["best_score"] for sid in SUBJECTS]
    assert all(0.0 <= b <= 1.0 for b in best)
    for sid in SUBJECTS:  # threshold 0.1: what is present has a box inside the image and a score >= 0.1
        if subjects[sid]["present"]:
            x0, y0, x1, y1 = subjects[sid]["box"]
            assert 0 <= x0 <= x1 <= SIZE and 0 <= y0 <= y1 <= SIZE and subjects[sid]["score"] >= 0.1
    settings = metrics[2].settings()
    assert settings["detector"]["model"] == "tiny:detector" and settings["detector"]["seed"] == 0
    assert settings["detector"]["model_class"] == "transformers.Owlv2ForObjectDetection"
    assert (settings["threshold"], settings["space"], settings["metric"]) == (0.1, "dino", "presence")
    assert settings["clip"]["model"] == "tiny:clip" and settings["dino"]["model"] == "tiny:dino"

    # A threshold between the two subjects' best scores: the weaker one is missing, identity 0.
    assert abs(best[0] - best[1]) > 1e-4
    weak = int(np.argmin(best))
    strict = RunContext(profile="tiny", **CPU)
    threshold = float(np.mean(best))
    presence = PresenceScore(strict, threshold=threshold).score([sample])[0]
    identity = IdentityCLIPScore(strict, threshold=threshold).score([sample])[0]
    assert presence.value == 0.5 and presence.details["subjects"][SUBJECTS[weak]]["present"] is False
    assert identity.details[SUBJECTS[weak]] == 0.0 and identity.value == pytest.approx(identity.details[SUBJECTS[1 - weak]] / 2)


def test_shared_analyzer_goes_with_its_context():
    context = RunContext(profile="tiny", **CPU)
    a, b = PresenceScore(context), SwapScore(context)
    assert a.analyzer is b.analyzer and PresenceScore(context, threshold=0.3).analyzer is not a.analyzer
    assert a.analyzer.clip is shared_clip_embedder(context)  # the CLIP model clip_t / clip_i load
    key = id(context)
    assert key in identity_module._SHARED_ANALYZERS
    del context, a, b
    gc.collect()
    assert key not in identity_module._SHARED_ANALYZERS


# ------------------------------------------------------------------------------------------
# Loading the detector


@pytest.fixture(scope="module")
def saved_detector(tmp_path_factory):
    from relbench.tiny import clip_tokenizer, tiny_clip

    root = tmp_path_factory.mktemp("detectors")
    model, processor = tiny_owlv2(seed=3)
    model.save_pretrained(root / "owlv2")
    processor.save_pretrained(root / "owlv2")
    clip_tokenizer().save_pretrained(root / "owlv2")
    clip, clip_processor = tiny_clip(seed=3)
    clip.save_pretrained(root / "clip")
    clip_processor.save_pretrained(root / "clip")
    return root


def test_saved_detector_loads_from_a_folder_and_detects_like_the_tiny_one(saved_detector, photos):
    folder = saved_detector / "owlv2"
    loaded = OpenVocabularyDetector(RunContext(profile="full", model_overrides={"detector": str(folder)}, **CPU))
    tiny = OpenVocabularyDetector(RunContext(profile="tiny", seed=3, **CPU))
    args = ([photos["astronaut"]], [("astronaut", "cat")])
    (d,), (e,) = loaded.detect(*args), tiny.detect(*args)
    assert np.allclose(d.boxes, e.boxes, atol=1e-3) and np.allclose(d.scores, e.scores, atol=1e-5)
    settings = loaded.settings()
    assert settings["model"] == str(folder) and settings["revision"] is None and "seed" not in settings
    assert settings["input_resolution"] == 64 and settings["query_max_tokens"] == 16


def test_detector_load_errors_are_one_line(saved_detector, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cases = [
        (str(tmp_path / "missing"), "no such folder"),
        ("relbench-test/not-cached", "--model detector=/local/path"),
        (str(saved_detector / "clip"), "model type 'clip' is not supported"),
    ]
    for model_id, message in cases:
        with pytest.raises(RelbenchError, match=message) as info:
            OpenVocabularyDetector(RunContext(profile="full", model_overrides={"detector": model_id}, **CPU))
        assert type(info.value) is RelbenchError and "\n" not in str(info.value)
    with pytest.raises(RelbenchError, match=r"must contain \{noun\}"):
        OpenVocabularyDetector(RunContext(profile="tiny", **CPU), query_template="a photo")


def test_default_detector_is_owlv2_base_ensemble():
    from relbench.metrics.identity.detector import detector_ref

    ref = detector_ref(RunContext(profile="full"))
    assert (ref.key, ref.id) == ("detector", "google/owlv2-base-patch16-ensemble")
    assert detector_ref(RunContext(profile="full", model_overrides={"detector": "org/other@abc"})).revision == "abc"


# ------------------------------------------------------------------------------------------
# CLIP-R


def test_clip_r_is_the_image_against_the_relation_phrase(photos):
    context = RunContext(profile="tiny", **CPU)
    a, c = photos["astronaut"], photos["cat"]
    samples = [
        ScoringSample("c1", a, "an astronaut hugging a cat", "hugging", ("astronaut",), ("astronaut",), ((a,),)),
        ScoringSample("c2", c, "a cat on top of a rocket", "on top of", ("cat",), ("cat",), ((c,),)),
    ]
    metric = CLIPRScore(context)
    values = [r.value for r in metric.score(samples)]
    embedder = shared_clip_embedder(context)
    assert metric.embedder is embedder and CLIPTScore(context).embedder is embedder  # one CLIP with clip_t
    images = embedder.embed_images([a, c]).numpy()
    texts = embedder.embed_texts(["hugging", "on top of"]).numpy()
    assert values == pytest.approx([cos100(images[0], texts[0]), cos100(images[1], texts[1])], abs=1e-4)
    prompts = [r.value for r in CLIPTScore(context).score(samples)]
    assert min(abs(v - p) for v, p in zip(values, prompts)) > 1e-3  # the phrase, not the prompt
    settings = metric.settings()
    assert settings["metric"] == "clip_r" and "relation phrase" in settings["text"] and settings["scale"] == 100.0
    with pytest.raises(RelbenchError, match="case c3: empty relation phrase"):
        metric.score([ScoringSample("c3", a, "p", " ", ("x",), ("x",), ((a,),))])
