"""The ``pose`` metric: keypoint math against closed forms and pycocotools, backends on real photos.

OKS is checked against pycocotools' ``COCOeval.computeOks`` (an independent implementation), the
alignment and inter-subject term against hand-built configurations, the association against
DreamRelation's real ``shake`` data (whose instance order is known to be swapped in examples 0-2),
ViTPose through a tiny random ViTPose++ and mediapipe's real BlazePose on the astronaut photo.
"""

from __future__ import annotations

import importlib.util
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network (see conftest)

import numpy as np
import pytest
from PIL import Image

from relbench.errors import RelbenchError
from relbench.keypoints import AP10K, COCO, skeleton_of_labels
from relbench.metrics.base import ScoringSample
from relbench.metrics.functional.keypoints import (
    associate_instances,
    box_area,
    compared_keypoints,
    convert_skeleton,
    fit_similarity,
    inter_subject_agreement,
    oks,
    pck,
    pck_threshold,
    score_configuration,
    unscorable_reason,
)
from relbench.metrics.pose import PoseInputs, PoseReference, PoseScore
from relbench.metrics.pose.backends import BLAZEPOSE_FOR_COCO, PoseBackend, PoseEstimate, VitPoseBackend, build_backend, tiny_vitpose
from relbench.metrics.pose.metric import reference_configuration
from relbench.profiles import RunContext

TINY = dict(profile="tiny", device="cpu")
AP10K_SIGMAS, COCO_SIGMAS = AP10K.sigmas, COCO.sigmas
BOXES = ((0.05, 0.05, 0.55, 0.95), (0.45, 0.1, 0.95, 0.9))


def rotation(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def two_animals(seed: int = 0) -> np.ndarray:
    """A (2, 17, 2) configuration: two random 17-point poses side by side, overlapping a little."""
    rng = np.random.default_rng(seed)
    left = rng.uniform([0.10, 0.20], [0.50, 0.80], size=(17, 2))
    right = rng.uniform([0.45, 0.25], [0.85, 0.85], size=(17, 2))
    return np.stack([left, right])


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).convert("RGB")


def scoring_sample(image: Image.Image, case_id: str = "c1", subjects: tuple[str, ...] = ("dog", "cat"), **extra) -> ScoringSample:
    return ScoringSample(
        case_id=case_id, image=image, prompt="a dog hugging a cat", relation_phrase="hugging",
        subject_ids=subjects, subject_nouns=subjects, references=tuple((image,) for _ in subjects), **extra,
    )


# ------------------------------------------------------------------------------------------
# OKS and PCK


def test_pose_against_itself_scores_one():
    target = two_animals()
    for s in range(2):
        assert oks(target[s], target[s], AP10K_SIGMAS, box_area(target[s])) == pytest.approx(1.0, abs=1e-12)
        assert pck(target[s], target[s], pck_threshold(target[s])) == 1.0
    result = score_configuration(target, target, AP10K_SIGMAS)
    assert result.value == pytest.approx(1.0, abs=1e-12)
    assert result.oks == pytest.approx((1.0, 1.0)) and result.pck == (1.0, 1.0)
    assert result.inter_subject == pytest.approx(1.0)


def test_shifted_pose_gives_the_closed_form_oks_and_pck():
    target = two_animals()[0]
    shift = np.array([0.03, -0.012])
    area = box_area(target)
    d2 = float((shift**2).sum())
    expected = np.mean([math.exp(-d2 / (2 * area * (2 * s) ** 2)) for s in AP10K_SIGMAS])
    assert oks(target + shift, target, AP10K_SIGMAS, area) == pytest.approx(expected, abs=1e-12)
    assert 0.3 < expected < 0.95  # a shift that matters but does not zero the score
    # PCK: every keypoint moves by |shift|, so all hit or all miss around the threshold.
    threshold = pck_threshold(target)
    assert pck(target + shift, target, threshold=math.sqrt(d2) * 1.01) == 1.0
    assert pck(target + shift, target, threshold=math.sqrt(d2) * 0.99) == 0.0
    x0, y0, x1, y1 = (target[:, 0].min(), target[:, 1].min(), target[:, 0].max(), target[:, 1].max())
    assert threshold == pytest.approx(0.1 * max(x1 - x0, y1 - y0))


def test_visibility_and_missing_predictions():
    target = two_animals()[0]
    pred = target.copy()
    pred[:4] = np.nan  # the estimator found nothing there: misses, not skipped
    assert oks(pred, target, AP10K_SIGMAS, box_area(target)) == pytest.approx(13 / 17)
    assert pck(pred, target, 0.01) == pytest.approx(13 / 17)
    visible = np.ones(17, dtype=bool)
    visible[:4] = False  # keypoints not compared at all
    assert oks(pred, target, AP10K_SIGMAS, box_area(target), visible=visible) == pytest.approx(1.0)
    assert math.isnan(oks(pred, target, AP10K_SIGMAS, 1.0, visible=np.zeros(17, dtype=bool)))


def test_oks_agrees_with_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(7)
    sigmas = np.array(AP10K_SIGMAS)
    images, gts, dts, expected = [], [], [], []
    for i in range(40):
        gt_xy = rng.uniform(10, 300, size=(17, 2))
        dt_xy = gt_xy + rng.normal(0, rng.uniform(1, 25), size=(17, 2))
        vis = rng.integers(0, 3, size=17)  # COCO v: 0 not labelled, 1 occluded, 2 visible
        vis[rng.integers(0, 17)] = 2  # at least one labelled keypoint
        area = float(rng.uniform(500, 40000))
        images.append({"id": i, "width": 320, "height": 320})
        gts.append({"id": i + 1, "image_id": i, "category_id": 1, "iscrowd": 0, "area": area, "num_keypoints": int((vis > 0).sum()),
                    "bbox": [5.0, 5.0, 300.0, 300.0], "keypoints": np.column_stack([gt_xy, vis]).ravel().tolist()})
        dts.append({"image_id": i, "category_id": 1, "score": 1.0,
                    "keypoints": np.column_stack([dt_xy, np.ones(17)]).ravel().tolist()})
        expected.append(oks(dt_xy, gt_xy, sigmas, area, visible=vis > 0))
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "animal"}]}
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(dts)
    evaluator = COCOeval(coco_gt, coco_dt, "keypoints")
    evaluator.params.kpt_oks_sigmas = sigmas
    evaluator.evaluate()
    reference = [float(np.asarray(evaluator.ious[(i, 1)])[0, 0]) for i in range(40)]
    assert np.allclose(expected, reference, atol=1e-6, rtol=0)
    assert min(reference) < 0.2 < 0.9 < max(reference)  # the random poses span good and bad


def test_two_visible_keypoints_are_scored_hand_computed():
    """The boundary: exactly 2 visible reference keypoints per subject is scored. The prediction is
    the reference with subject 0's second keypoint not found: the 3 points found fit the identity, so
    OKS and PCK are 1/2 (found, missed) and 1; the placement term compares the same centroid offsets: 1."""
    target = np.full((2, 17, 2), np.nan)
    target[0, [2, 5]] = [[0.20, 0.30], [0.35, 0.50]]
    target[1, [2, 5]] = [[0.60, 0.35], [0.70, 0.60]]
    pred = target.copy()
    pred[0, 5] = np.nan
    result = score_configuration(pred, target, AP10K_SIGMAS)
    assert result.excluded == () and result.scored == 2
    assert result.oks == pytest.approx((0.5, 1.0), abs=1e-9) and result.pck == (0.5, 1.0)
    assert result.inter_subject == pytest.approx(1.0, abs=1e-9)
    assert result.value == pytest.approx(0.75, abs=1e-9)
    assert unscorable_reason(target[0]) is None


def test_subjects_with_fewer_than_two_visible_keypoints_are_excluded_with_a_reason():
    # Two identical one-keypoint subjects: box and radius 0; the old code scored this perfect copy 0.
    single = np.full((2, 17, 2), np.nan)
    single[0, 3] = [0.2, 0.3]
    single[1, 5] = [0.6, 0.4]
    result = score_configuration(single.copy(), single, AP10K_SIGMAS)
    reason = "1 visible keypoint in the reference, need >= 2"
    assert result.excluded == ((0, reason), (1, reason)) and result.scored == 0
    assert math.isnan(result.value) and all(math.isnan(v) for v in result.oks + result.pck)
    # One full subject and one with a single keypoint predicted a hair off: the single one is left
    # out of every term (alignment included), not scored 0; the full one alone is a perfect copy.
    target = two_animals()
    target[1, 1:] = np.nan
    pred = target.copy()
    pred[1, 0] += 0.001
    mixed = score_configuration(pred, target, AP10K_SIGMAS)
    assert mixed.excluded == ((1, reason),)
    assert mixed.value == pytest.approx(1.0, abs=1e-9) and math.isnan(mixed.inter_subject)
    assert mixed.oks[0] == pytest.approx(1.0) and math.isnan(mixed.oks[1]) and math.isnan(mixed.pck[1])
    # Keypoints the prediction's skeleton lacks do not count as visible; two on one point give no size.
    compared = np.ones(17, dtype=bool)
    compared[1] = False
    two = np.full((17, 2), np.nan)
    two[[0, 1]] = [[0.2, 0.3], [0.4, 0.3]]
    assert unscorable_reason(two) is None and unscorable_reason(two, compared) == reason
    two[1] = two[0]
    assert unscorable_reason(two) == "its 2 visible keypoints in the reference lie on one point"


def test_reference_with_no_keypoints_scores_nan_with_a_reason():
    empty = np.full((2, 17, 2), np.nan)
    result = score_configuration(two_animals(), empty, AP10K_SIGMAS)  # the old code raised ValueError
    assert math.isnan(result.value)
    assert result.excluded == tuple((s, "0 visible keypoints in the reference, need >= 2") for s in range(2))


# ------------------------------------------------------------------------------------------
# Alignment, inter-subject term, skeletons


def test_similarity_copy_of_the_reference_scores_one():
    target = two_animals(3)
    pred = 3.7 * target @ rotation(40).T + np.array([5.0, -2.0])
    result = score_configuration(pred, target, AP10K_SIGMAS)
    assert result.value == pytest.approx(1.0, abs=1e-9)
    assert result.pck == (1.0, 1.0)
    assert result.transform.scale == pytest.approx(1 / 3.7)
    assert math.degrees(result.transform.angle) == pytest.approx(-40.0)
    # A mirror image is not a similarity: left and right differ, so it must not score 1.
    mirrored = target * np.array([-1.0, 1.0])
    assert score_configuration(mirrored, target, AP10K_SIGMAS).value < 0.5


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(30, 2))
    dst = 0.4 * src @ rotation(-120).T + np.array([1.0, 2.0])
    fit = fit_similarity(src, dst)
    assert fit.scale == pytest.approx(0.4)
    assert np.allclose(fit.rotation, rotation(-120))
    assert np.allclose(fit.apply(src), dst)
    single = fit_similarity(src[:1], dst[:1])  # no spread: a translation only
    assert single.scale == 1.0 and np.allclose(single.apply(src[:1]), dst[:1])


def test_inter_subject_term_closed_form():
    target = two_animals()
    shift = np.array([0.2, 0.1])
    pred = target.copy()
    pred[1] += shift
    r = [math.sqrt(((t - t.mean(axis=0)) ** 2).sum(axis=1).mean()) for t in target]
    size = (r[0] + r[1]) / 2
    expected = math.exp(-float((shift**2).sum()) / size**2 / (2 * 0.5**2))
    assert inter_subject_agreement(pred, target) == pytest.approx(expected, abs=1e-12)
    assert inter_subject_agreement(pred, target, kappa=1.0) == pytest.approx(expected ** 0.25, abs=1e-12)
    assert math.isnan(inter_subject_agreement(pred[:1], target[:1]))


def test_correct_poses_placed_far_apart_score_low():
    target = two_animals()  # the reference: the two subjects overlap
    pred = target.copy()
    pred[1] += np.array([2.0, 0.0])  # the same two poses, far apart
    result = score_configuration(pred, target, AP10K_SIGMAS)
    assert result.inter_subject < 0.01
    assert result.value < 0.01
    # Each pose alone is right: aligned on its own it scores 1.
    for s in range(2):
        assert score_configuration(pred[s : s + 1], target[s : s + 1], AP10K_SIGMAS).value == pytest.approx(1.0)


def test_skeleton_conversion_between_coco_and_ap10k():
    coco = np.arange(17 * 2, dtype=float).reshape(1, 17, 2)
    ap10k = convert_skeleton(coco, "coco", "ap10k")
    assert np.array_equal(ap10k[0, 7], coco[0, 9])  # L_F_Paw <- left wrist
    assert np.array_equal(ap10k[0, 16], coco[0, 16])  # R_B_Paw <- right ankle
    assert np.array_equal(ap10k[0, 2], coco[0, 0])  # nose
    assert np.isnan(ap10k[0, 3]).all() and np.isnan(ap10k[0, 4]).all()  # neck, root of tail
    compared = compared_keypoints("coco", "ap10k")
    assert compared.sum() == 15 and not compared[3] and not compared[4]
    back = convert_skeleton(ap10k, "ap10k", "coco")
    assert np.array_equal(back[0, [0, 1, 2] + list(range(5, 17))], coco[0, [0, 1, 2] + list(range(5, 17))])
    assert np.isnan(back[0, 3:5]).all()  # ears
    assert skeleton_of_labels(["Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear", "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow",
                               "L_Wrist", "R_Wrist", "L_Hip", "R_Hip", "L_Knee", "R_Knee", "L_Ankle", "R_Ankle"]) == "coco"
    assert skeleton_of_labels([f"LABEL_{i}" for i in range(17)]) is None


def test_cross_skeleton_scoring_leaves_unmatched_keypoints_out():
    target = two_animals()  # AP-10K
    coco_pred = np.full((2, 17, 2), np.nan)
    # Put each AP-10K keypoint's true place on its COCO counterpart; the ears get garbage.
    coco_pred[:] = convert_skeleton(target, "ap10k", "coco")
    coco_pred[:, 3:5] = 99.0
    pred = convert_skeleton(coco_pred, "coco", "ap10k")
    result = score_configuration(pred, target, AP10K_SIGMAS, compared=compared_keypoints("coco", "ap10k"))
    assert result.value == pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------------------------------------
# Association of reference instances to subjects


def rectangle_mask(x0: float, x1: float, size: int = 100) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[:, int(x0 * size) : int(x1 * size)] = True
    return mask


def test_association_undoes_swapped_instances():
    rng = np.random.default_rng(2)
    left = rng.uniform([0.05, 0.1], [0.45, 0.9], size=(17, 2))
    right = rng.uniform([0.55, 0.1], [0.95, 0.9], size=(17, 2))
    masks = (rectangle_mask(0.0, 0.5), rectangle_mask(0.5, 1.0))  # subject 0 on the left
    swapped = np.stack([right, left])  # the file lists the right-hand instance first
    assert associate_instances(swapped, masks) == (1, 0)
    assert associate_instances(np.stack([left, right]), masks) == (0, 1)

    reference = PoseReference(swapped, "ap10k", (100, 100), masks, "swapped.pth")
    assert np.allclose(reference_configuration(reference, 2, "c"), np.stack([left, right]))
    generated = np.stack([left, right])  # the generated subjects, in role order
    with_masks = score_configuration(generated, reference_configuration(reference, 2, "c"), AP10K_SIGMAS)
    by_order = score_configuration(generated, reference_configuration(PoseReference(swapped, "ap10k"), 2, "c"), AP10K_SIGMAS)
    assert with_masks.value == pytest.approx(1.0)
    assert by_order.value < 0.5


def test_reference_instances_and_masks_must_cover_the_subjects():
    reference = PoseReference(two_animals(), "ap10k", None, (rectangle_mask(0, 1),), "one-mask.pth")
    with pytest.raises(RelbenchError, match=r"one-mask.pth: 1 masks for the 2 subjects of case c"):
        reference_configuration(reference, 2, "c")
    with pytest.raises(RelbenchError, match=r"few.pth: 2 instances for the 3 subjects"):
        reference_configuration(PoseReference(two_animals(), "ap10k", source="few.pth"), 3, "c")


@pytest.mark.shared_data
def test_association_on_dreamrelation_shake(shared_data):
    """The shared data's README: in shake/0-2 instance 0 sits on entity 1; in 3 and 4 it does not."""
    from relbench.benchmark import ReferencePose
    from relbench.metrics.pose.metric import load_reference_poses

    poses = [ReferencePose(f"dreamrelation/shake/videos/{i}/motion_keyposes.pth", "ap10k", f"dreamrelation/shake/videos/{i}/motion.png",
                           (f"dreamrelation/shake/masks/{i}/motion0.png", f"dreamrelation/shake/masks/{i}/motion1.png")) for i in range(5)]
    loaded = load_reference_poses(poses, shared_data, None)
    assert [associate_instances(ref.keypoints, ref.masks) for ref in loaded] == [(1, 0), (1, 0), (1, 0), (0, 1), (0, 1)]
    assert loaded[0].image_size == (512, 512) and loaded[0].keypoints.shape == (2, 17, 2)


# ------------------------------------------------------------------------------------------
# Backends


def test_tiny_vitpose_backend_on_a_photo(astronaut):
    backend = VitPoseBackend(RunContext(**TINY))
    boxes = np.array([[20.0, 30.0, 200.0, 400.0], [250.0, 60.0, 220.0, 420.0]])
    first = backend.estimate([astronaut, astronaut], [boxes, boxes[:1]], dataset_index=3)
    assert [e.keypoints.shape for e in first] == [(2, 17, 2), (1, 17, 2)]
    assert first[0].scores.shape == (2, 17)
    assert np.isfinite(first[0].keypoints).all()
    assert ((first[0].scores >= 0) & (first[0].scores <= 1)).all()
    # Boxes are COCO xywh pixels: the photo moved on a larger black canvas with its boxes moved
    # alike gives the same crops, so the same poses, moved (to 0.1 px: the crops reaching past the
    # photo's edge interpolate its border slightly differently from the canvas's black).
    canvas = Image.new("RGB", (600, 640))
    canvas.paste(astronaut, (37, 21))
    moved = backend.estimate([canvas], [boxes + np.array([37.0, 21.0, 0.0, 0.0])], dataset_index=3)[0]
    assert np.allclose(moved.keypoints - np.array([37.0, 21.0]), first[0].keypoints, atol=0.1)
    assert np.allclose(moved.scores, first[0].scores, atol=1e-3)
    assert np.ptp(first[0].keypoints[0, :, 0]) > 0  # not all on one spot
    # The same box in a batch of one gives the same pose; a rebuilt model gives the same numbers.
    assert np.allclose(first[1].keypoints[0], first[0].keypoints[0], atol=1e-4)
    # (The same batch: a batch of another size may take another BLAS path and differ by ~1e-5.)
    again = VitPoseBackend(RunContext(**TINY)).estimate([astronaut, astronaut], [boxes, boxes[:1]], dataset_index=3)
    assert np.array_equal(again[0].keypoints, first[0].keypoints)
    # ViTPose++'s experts: another dataset_index, other features, other heatmaps.
    coco = backend.estimate([astronaut], [boxes], dataset_index=0)
    assert not np.allclose(coco[0].scores, first[0].scores)
    with pytest.raises(RelbenchError, match="pose.dataset_index: 7 is not an expert"):
        backend.estimate([astronaut], [boxes], dataset_index=7)


def test_vitpose_loads_a_saved_folder_like_the_tiny_model(astronaut, tmp_path):
    model, processor = tiny_vitpose(seed=0)
    model.save_pretrained(tmp_path / "vitpose")
    processor.save_pretrained(tmp_path / "vitpose")
    loaded = VitPoseBackend(RunContext(profile="full", device="cpu", model_overrides={"pose": str(tmp_path / "vitpose")}))
    boxes = [np.array([[20.0, 30.0, 200.0, 400.0]])]
    assert loaded.model_id == str(tmp_path / "vitpose") and loaded.skeleton == "coco"
    tiny = VitPoseBackend(RunContext(**TINY))
    assert np.allclose(loaded.estimate([astronaut], boxes, 0)[0].keypoints, tiny.estimate([astronaut], boxes, 0)[0].keypoints, atol=1e-5)


def test_vitpose_with_unknown_keypoint_labels_is_refused():
    model, processor = tiny_vitpose(seed=0)
    model.config.id2label = {i: f"LABEL_{i}" for i in range(17)}
    with pytest.raises(RelbenchError, match=r"keypoint labels .* match no known skeleton"):
        VitPoseBackend(RunContext(**TINY), (model, processor))


needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe not installed")
quiet_protobuf = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")  # raised inside mediapipe


@needs_mediapipe
@quiet_protobuf
def test_mediapipe_finds_the_astronaut(astronaut):
    """Real BlazePose weights (bundled in the wheel) on scikit-image's astronaut (512 x 512):
    her face is around x 190-270, y 90-170, her shoulders around y 240-260."""
    import mediapipe as mp

    assert [mp.solutions.pose.PoseLandmark[name].name for name in BLAZEPOSE_FOR_COCO][:3] == ["NOSE", "LEFT_EYE", "RIGHT_EYE"]
    backend = build_backend("mediapipe", RunContext(**TINY))
    estimate = backend.estimate([astronaut], [np.array([[0.0, 0.0, 512.0, 512.0]])])[0]
    points, scores = estimate.keypoints[0], estimate.scores[0]
    nose, l_eye, r_eye, l_shoulder, r_shoulder = points[0], points[1], points[2], points[5], points[6]
    assert 180 < nose[0] < 270 and 90 < nose[1] < 170
    for eye in (l_eye, r_eye):
        assert 180 < eye[0] < 280 and 80 < eye[1] < nose[1]  # eyes above the nose
    assert r_eye[0] < nose[0] < l_eye[0]  # she faces the camera: her left is the image's right
    assert r_shoulder[0] < 200 < 260 < l_shoulder[0]
    for shoulder in (l_shoulder, r_shoulder):
        assert 200 < shoulder[1] < 300
    assert (scores[[0, 1, 2, 5, 6]] > 0.9).all()
    assert backend.settings()["model"].startswith(f"mediapipe {mp.__version__} BlazePose full")


@needs_mediapipe
@quiet_protobuf
def test_mediapipe_reports_a_box_with_nobody_as_missing():
    blank = Image.new("RGB", (128, 128), (127, 127, 127))
    estimate = build_backend("mediapipe", RunContext(**TINY)).estimate([blank], [np.array([[0.0, 0.0, 128.0, 128.0]])])[0]
    assert np.isnan(estimate.keypoints).all() and (estimate.scores == 0).all()


@pytest.mark.skipif(importlib.util.find_spec("mmpose") is not None, reason="mmpose is installed")
def test_mmpose_absent_is_a_clear_error():
    with pytest.raises(RelbenchError) as error:
        PoseScore(RunContext(**TINY), backend="mmpose")
    message = str(error.value)
    assert "mmpose is not installed" in message and "mmcv" in message and "vitpose" in message
    assert "\n" not in message


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(RelbenchError, match=r"pose.backend: unknown backend 'openpose'; expected one of vitpose, mediapipe, mmpose"):
        PoseScore(RunContext(**TINY), backend="openpose")


# ------------------------------------------------------------------------------------------
# The metric


def test_tiny_metric_end_to_end(astronaut):
    references = (PoseReference(two_animals(0), "ap10k"), PoseReference(two_animals(1), "coco"))
    inputs = [PoseInputs(BOXES, references), PoseInputs(BOXES, ())]
    samples = [scoring_sample(astronaut, "c1"), scoring_sample(astronaut, "c2")]
    results = PoseScore(RunContext(**TINY)).score(samples, inputs)
    again = PoseScore(RunContext(**TINY)).score(samples, inputs)
    first = results[0]
    assert 0.0 <= first.value <= 1.0
    assert first.value == again[0].value and first.details == again[0].details
    # The value is the best reference's; every reference stays in the details.
    assert first.value == max(first.details["ref0/value"], first.details["ref1/value"])
    best = int(first.details["reference"])
    assert first.details["oks"] == first.details[f"ref{best}/oks"]
    assert first.value == pytest.approx(first.details["oks"] * first.details["inter_subject"])
    assert first.details["oks"] == pytest.approx((first.details["oks/dog"] + first.details["oks/cat"]) / 2)
    assert first.details["dataset_index"] == (3.0 if best == 0 else 0.0)
    assert math.isnan(results[1].value) and results[1].details == {"reason": "no reference poses"}


class ReplayBackend(PoseBackend):
    """A backend that returns given keypoints (pixels), to test the metric's own arithmetic."""

    name = "replay"
    skeleton = "ap10k"

    def __init__(self, keypoints: np.ndarray):
        self.keypoints = keypoints

    def estimate(self, images, boxes, dataset_index=None):
        return [PoseEstimate(self.keypoints, np.ones(self.keypoints.shape[:2])) for _ in images]

    def settings(self):
        return {"backend": self.name}


def test_metric_scores_a_generated_copy_of_the_reference_one(astronaut):
    target = two_animals(4)
    masks = (rectangle_mask(0.0, 0.5), rectangle_mask(0.45, 1.0))
    reference = PoseReference(target[::-1].copy(), "ap10k", (100, 100), masks, "ref.pth")  # swapped in the file
    # The generated image (512 x 512) shows the reference scaled, rotated and moved.
    generated = (0.8 * target @ rotation(15).T + 0.1) * 512
    metric = PoseScore(RunContext(**TINY), ReplayBackend(generated))
    result = metric.score([scoring_sample(astronaut)], [PoseInputs(BOXES, (reference,))])[0]
    assert result.value == pytest.approx(1.0, abs=1e-9)
    assert result.details["pck"] == 1.0 and "dataset_index" not in result.details
    assert metric.settings()["dataset_index"] is None


def test_metric_records_excluded_subjects_and_prefers_references_that_score_all(astronaut, tmp_path):
    import torch

    from relbench.benchmark import ReferencePose
    from relbench.metrics.pose.metric import load_reference_poses

    target = two_animals(4)
    metric = PoseScore(RunContext(**TINY), ReplayBackend(target * 512))  # the generated image: the reference exactly
    one_keypoint = target.copy()
    one_keypoint[1, 1:] = np.nan  # the cat shows one keypoint in this reference
    shifted = target.copy()
    shifted[1] += 0.02  # both subjects, the cat a little off
    partial = PoseReference(one_keypoint, "ap10k", source="partial.pth")
    reason = "subject cat: 1 visible keypoint in the reference, need >= 2"

    alone = metric.score([scoring_sample(astronaut)], [PoseInputs(BOXES, (partial,))])[0]
    assert alone.value == pytest.approx(1.0, abs=1e-9)  # the dog alone, a perfect copy
    assert alone.details["excluded"] == [reason] and alone.details["ref0/excluded"] == [reason]
    assert alone.details["oks/dog"] == pytest.approx(1.0) and "oks/cat" not in alone.details and "pck/cat" not in alone.details
    assert math.isnan(alone.details["inter_subject"])

    # The partial reference scores higher (1.0) only by leaving the cat out: the one that scores
    # both subjects is chosen.
    both = metric.score([scoring_sample(astronaut)], [PoseInputs(BOXES, (partial, PoseReference(shifted, "ap10k")))])[0]
    assert both.details["ref0/value"] == pytest.approx(1.0, abs=1e-9)
    assert both.details["ref1/value"] < 0.99
    assert both.details["reference"] == 1.0 and both.value == both.details["ref1/value"]
    assert "excluded" not in both.details and both.details["ref0/excluded"] == [reason]

    # A reference with no keypoints (an empty keypoints file) is a recorded NaN, not an error.
    torch.save(torch.zeros((0, 17, 2)), tmp_path / "empty.pth")
    empty = load_reference_poses([ReferencePose("empty.pth", "ap10k")], tmp_path, None)
    assert empty[0].keypoints.shape == (0, 17, 2)
    nothing = metric.score([scoring_sample(astronaut)], [PoseInputs(BOXES, empty)])[0]
    assert math.isnan(nothing.value)
    assert nothing.details["reason"] == (
        f"no subject can be scored against the reference poses: ref0 ({tmp_path / 'empty.pth'}) "
        "subject dog: 0 visible keypoints in the reference, need >= 2, subject cat: 0 visible keypoints in the reference, need >= 2"
    )


@pytest.mark.parametrize("form", ["visibility file", "third channel"])
def test_reference_keypoints_marked_invisible_are_not_scored(astronaut, tmp_path, form):
    import torch

    from relbench.benchmark import ReferencePose
    from relbench.metrics.pose.metric import load_reference_poses

    target = two_animals(4)
    metric = PoseScore(RunContext(**TINY), ReplayBackend(target * 512))  # the generated image: the reference's pose
    stored = target.copy()
    stored[0, 3] = (0.99, 0.01)  # the dog's neck, hidden in the reference photo: its coordinates mean nothing
    visible = np.ones((2, 17), dtype=bool)
    visible[0, 3] = False
    if form == "visibility file":
        torch.save(torch.tensor(stored, dtype=torch.float32), tmp_path / "pose.pth")
        torch.save(torch.tensor(visible), tmp_path / "pose_visibility.pth")
    else:
        torch.save(torch.tensor(np.concatenate([stored, visible[..., None]], -1), dtype=torch.float32), tmp_path / "pose.pth")
    references = load_reference_poses([ReferencePose("pose.pth", "ap10k")], tmp_path, None)
    assert np.isnan(references[0].keypoints[0, 3]).all() and np.isfinite(references[0].keypoints[1]).all()
    result = metric.score([scoring_sample(astronaut)], [PoseInputs(BOXES, references)])[0]
    # The old loader scored the hidden neck as if visible: 0.68 here instead of a perfect copy.
    assert result.value == pytest.approx(1.0, abs=1e-9)
    assert result.details["oks/dog"] == pytest.approx(1.0, abs=1e-9) and result.details["pck/dog"] == 1.0
    seen = PoseReference(stored, "ap10k")  # the same file without its visibility: the neck counts
    assert metric.score([scoring_sample(astronaut)], [PoseInputs(BOXES, (seen,))])[0].value < 0.9


def test_metric_reads_reference_poses_from_the_sample(astronaut, tmp_path):
    import torch

    from relbench.benchmark import Benchmark, Case, ReferencePose, Relation, RelationKind, Subject

    torch.save(torch.tensor(two_animals(5), dtype=torch.float32), tmp_path / "pose.pth")
    relation = Relation("hug", "hugging", RelationKind.INTERACTION, (("animal",), ("animal",)),
                        (ReferencePose("pose.pth", "ap10k"),))
    bare = Relation("near", "next to", RelationKind.SPATIAL, (("animal",), ("animal",)))
    subjects = {s: Subject(s, s, "animal", ("skimage:chelsea",)) for s in ("dog", "cat")}
    case = Case("c1", ("dog", "cat"), "hug", "a dog hugging a cat", BOXES)
    benchmark = Benchmark("t", "1", "", subjects, {"hug": relation, "near": bare}, (case,))
    metric = PoseScore(RunContext(**TINY))
    samples = [scoring_sample(astronaut, relation_id="hug", boxes=BOXES, benchmark=benchmark, data_root=tmp_path),
               scoring_sample(astronaut, "c2", relation_id="near", boxes=BOXES, benchmark=benchmark, data_root=tmp_path)]
    results = metric.score(samples)
    given = metric.score(samples[:1], [PoseInputs(BOXES, (PoseReference(two_animals(5), "ap10k"),))])
    assert results[0].value == pytest.approx(given[0].value, abs=1e-6)
    assert math.isnan(results[1].value) and results[1].details == {"reason": "relation 'near' has no reference poses"}
    with pytest.raises(RelbenchError, match=r"case c1: 1 layout boxes for 2 subjects"):
        metric.score([scoring_sample(astronaut, relation_id="hug", boxes=BOXES[:1], benchmark=benchmark, data_root=tmp_path)])
    missing = Relation("hug", "hugging", RelationKind.INTERACTION, relation.fits, (ReferencePose("missing.pth", "ap10k"),))
    other = Benchmark("t", "1", "", subjects, {"hug": missing}, (case,))
    with pytest.raises(RelbenchError, match=r"missing.pth: keypoints file not found"):
        metric.score([scoring_sample(astronaut, relation_id="hug", boxes=BOXES, benchmark=other, data_root=tmp_path)])


@pytest.mark.shared_data
def test_relationbench_hug_case_scores_against_all_five_references(shared_data, astronaut):
    from relbench.benchmarks import load_benchmark

    benchmark = load_benchmark("relationbench")
    case = next(c for c in benchmark.cases if c.relation == "hug")
    sample = scoring_sample(astronaut, case.id, case.subjects, relation_id="hug", boxes=case.boxes, benchmark=benchmark,
                            data_root=shared_data)
    result = PoseScore(RunContext(**TINY)).score([sample])[0]
    values = [result.details[f"ref{i}/value"] for i in range(5)]
    assert result.value == max(values) and 0.0 <= result.value <= 1.0
    assert result.details["dataset_index"] == 3.0  # AP-10K references -> ViTPose++'s AP-10K experts


def test_settings_record_backend_model_dataset_index_skeleton_and_sigmas():
    settings = PoseScore(RunContext(**TINY)).settings()
    assert settings["metric"] == "pose" and settings["backend"] == "vitpose"
    assert settings["model"] == "tiny:pose" and settings["seed"] == 0
    assert settings["skeleton"] == "coco" and settings["num_experts"] == 6
    assert settings["dataset_index"] == {"coco": 0, "ap10k": 3}
    assert settings["sigmas"] == {"coco": list(COCO_SIGMAS), "ap10k": list(AP10K_SIGMAS)}
    assert settings["pck_alpha"] == 0.1 and settings["inter_kappa"] == 0.5
    assert "layout boxes" in settings["boxes"] and "mask containment" in settings["association"]
    fixed = PoseScore(RunContext(**TINY), dataset_index=0).settings()
    assert fixed["dataset_index"] == 0
    single_expert = PoseScore(RunContext(**TINY), tiny_vitpose(seed=0, num_experts=1)).settings()
    assert single_expert["dataset_index"] is None and single_expert["num_experts"] == 1


def test_dtype_is_applied_and_recorded(astronaut):
    boxes = [np.array([[20.0, 30.0, 200.0, 400.0]])]
    full = VitPoseBackend(RunContext(**TINY)).estimate([astronaut], boxes, 3)[0]
    half = VitPoseBackend(RunContext(**TINY), dtype="bfloat16")
    assert str(half.model.dtype) == "torch.bfloat16" and half.settings()["dtype"] == "bfloat16"
    estimate = half.estimate([astronaut], boxes, 3)[0]
    assert np.allclose(estimate.scores, full.scores, atol=0.02) and not np.array_equal(estimate.scores, full.scores)
    with pytest.raises(RelbenchError, match="unknown dtype 'float8'"):
        PoseScore(RunContext(**TINY), dtype="float8")
