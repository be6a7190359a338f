"""DreamRelation training triplets: reading, validation, instance association, augmentation."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relbench.errors import RelbenchError
from relbench.keypoints import AP10K, COCO, Skeleton
from relbench.methods.dreamrelation.data import (
    NUMBER_WORDS,
    Placement,
    TrainingDataError,
    TripletDataset,
    TripletTransform,
    associate_instances,
    association_scores,
    collate,
    derive_predicate,
    load_mask,
    read_relation_dir,
    validate_relation_dir,
)

ANIMALS = ["cat", "dog", "fox"]


def make_relation(root: Path, n: int = 2, k: int = 5, size: tuple[int, int] = (64, 48), order: list[int] | None = None,
                  examples: int = 1) -> Path:
    """A valid relation "dance" under root: entity j owns the j-th vertical strip of motion.png.

    ``order`` is the entity of each instance in motion_keyposes.pth (default: entity order).
    """
    rel = root / "dance"
    width, height = size
    prompts = {}
    for index in range(examples):
        entities = ANIMALS[:n]
        prompts[str(index)] = {"prompt": "A " + ", a ".join(entities[:-1]) + f" and a {entities[-1]} are dancing.",
                               "entities": entities}
        video, masks = rel / "videos" / str(index), rel / "masks" / str(index)
        video.mkdir(parents=True)
        masks.mkdir(parents=True)
        Image.new("RGB", size, (90, 120, 150)).save(video / "motion.png")
        points = []
        for j in range(n):
            left, right = j * width // n, (j + 1) * width // n
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[4:height - 4, left + 2:right - 2] = 255
            Image.fromarray(mask).save(masks / f"motion{j}.png")
            xs = np.linspace(left + 4, right - 4, k) / width
            ys = np.linspace(8, height - 8, k) / height
            points.append(np.stack([xs, ys], -1))
            Image.new("RGB", (40, 40), (60 * j, 50, 50)).save(video / f"concept{j}.png")
            concept = np.stack([np.linspace(0.2, 0.8, k), np.linspace(0.1, 0.9, k)], -1)[None]
            torch.save(torch.tensor(concept, dtype=torch.float32), video / f"concept_keyposes_{NUMBER_WORDS[j]}.pth")
        order = order if order is not None else list(range(n))
        torch.save(torch.tensor(np.stack(points)[order], dtype=torch.float32), video / "motion_keyposes.pth")
    (rel / "prompts.json").write_text(json.dumps(prompts))
    return root


def edit_prompts(root: Path, change: Callable[[dict], None]) -> None:
    path = root / "dance" / "prompts.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------
# The real sample data.


@pytest.mark.shared_data
def test_reads_hug_and_shake(shared_data: Path) -> None:
    root = shared_data / "dreamrelation"
    hug = read_relation_dir(root, "hug")
    shake = read_relation_dir(root, "shake")
    assert [t.index for t in hug] == [0, 1, 2, 3, 4]
    assert [t.index for t in shake] == [0, 1, 2, 3, 4]
    assert hug[3].entities == ("kangaroo", "chimpanzee")
    assert hug[3].predicate == ("hugging",) and not hug[3].predicate_derived
    assert shake[1].entities == ("polar bear", "lion")
    for t in hug + shake:
        assert t.num_entities == 2 and t.num_keypoints == 17
        assert t.keypoints.shape == (2, 17, 2) and bool(t.visibility.all())
        assert [c.shape for c in t.concept_keypoints] == [(1, 17, 2), (1, 17, 2)]
        assert [p.name for p in t.concept_images] == ["concept0.png", "concept1.png"]
        assert [p.name for p in t.masks] == ["motion0.png", "motion1.png"]
        assert t.concept_keypoints_files[1].name == "concept_keyposes_two.pth"
    assert validate_relation_dir(root, "hug") == []
    assert validate_relation_dir(root, "shake") == []


@pytest.mark.shared_data
def test_shake_predicate_is_derived_from_the_prompt(shared_data: Path) -> None:
    shake = read_relation_dir(shared_data / "dreamrelation", "shake")
    assert all(t.predicate_derived for t in shake)
    assert [t.predicate for t in shake] == [("shakes", "hands")] * 3 + [("shaking", "hands")] * 2


@pytest.mark.shared_data
def test_derivation_rule_reproduces_the_given_hug_predicates(shared_data: Path) -> None:
    for t in read_relation_dir(shared_data / "dreamrelation", "hug"):
        assert derive_predicate(t.prompt, t.entities) == t.predicate


def test_derive_predicate_rule() -> None:
    assert derive_predicate("A wolf shakes hands with a leopard.", ["wolf", "leopard"]) == ("shakes", "hands")
    assert derive_predicate("A raccoon and a sloth are shaking hands.", ["raccoon", "sloth"]) == ("shaking", "hands")
    assert derive_predicate("A Polar Bear is hugging a lion", ["polar bear", "lion"]) == ("hugging",)
    assert derive_predicate("A cat, a dog and a fox are dancing together.", ["cat", "dog", "fox"]) == ("dancing",)
    assert derive_predicate("A cat and a dog.", ["cat", "dog"]) is None  # no verb
    assert derive_predicate("A cat hugs a bear.", ["dog", "bear"]) is None  # entity not in the prompt


@pytest.mark.shared_data
def test_association_swaps_exactly_the_swapped_examples(shared_data: Path) -> None:
    root = shared_data / "dreamrelation"
    perms = {}
    for relation in ("hug", "shake"):
        for t in read_relation_dir(root, relation):
            perms[f"{relation}/{t.index}"] = associate_instances(t.keypoints, [load_mask(p) for p in t.masks], t.visibility)
    swapped = sorted(name for name, perm in perms.items() if perm == [1, 0])
    assert all(perm in ([0, 1], [1, 0]) for perm in perms.values())
    # shake/0-2 are the documented swaps. hug/2 is swapped too: its instance 0 is the tiger
    # (entity 1), checked below by the hind legs, which only the tiger's mask holds.
    assert swapped == ["hug/2", "shake/0", "shake/1", "shake/2"]


@pytest.mark.shared_data
def test_hug_2_instance_0_is_the_tiger(shared_data: Path) -> None:
    t = read_relation_dir(shared_data / "dreamrelation", "hug")[2]
    assert t.entities == ("bear", "tiger")
    bear, tiger = (load_mask(p) for p in t.masks)
    hind_legs = t.keypoints[0, [AP10K.keypoints.index(name) for name in ("l_knee", "l_b_paw", "r_knee", "r_b_paw")]]
    height, width = bear.shape
    cols = (hind_legs[:, 0] * width).long().clamp(max=width - 1)
    rows = (hind_legs[:, 1] * height).long().clamp(max=height - 1)
    assert tiger[rows, cols].all() and not bear[rows, cols].any()


@pytest.mark.shared_data
def test_dataset_on_real_data_reorders_by_association(shared_data: Path) -> None:
    root = shared_data / "dreamrelation"
    dataset = TripletDataset(root, "shake", resolution=512)  # the images are 512 px: a no-op resize
    assert len(dataset) == 5
    raw = dataset.triplets[0]
    item = dataset[0]
    assert item["association"].tolist() == [1, 0]
    assert torch.equal(item["motion_keypoints"], raw.keypoints[[1, 0]])
    assert item["predicate"] == ["shakes", "hands"] and item["entities"] == ["wolf", "leopard"]
    assert item["motion_pixel_values"].shape == (3, 512, 512)
    assert -1.0 <= item["motion_pixel_values"].min() < item["motion_pixel_values"].max() <= 1.0
    assert item["concept_pixel_values"].shape == (2, 3, 512, 512)
    expected_masks = np.stack([load_mask(p) for p in raw.masks])
    assert np.array_equal(item["motion_masks"][:, 0].numpy() > 0, expected_masks)
    assert torch.equal(item["concept_keypoints"], torch.cat(raw.concept_keypoints))
    assert bool(item["motion_visibility"].all()) and bool(item["concept_visibility"].all())
    # After association instance i lies in entity i's mask (shake masks do not overlap).
    for entity in range(2):
        cols = (item["motion_keypoints"][entity, :, 0] * 512).long().clamp(max=511)
        rows = (item["motion_keypoints"][entity, :, 1] * 512).long().clamp(max=511)
        assert expected_masks[entity][rows, cols].mean() > 0.9


# ---------------------------------------------------------------------------------------------
# Validation: each kind of bad data gives a one-line error naming the file.


def _remove(path: str) -> Callable[[Path], None]:
    return lambda rel: (rel / path).unlink()


def _save_tensor(path: str, value: torch.Tensor) -> Callable[[Path], None]:
    return lambda rel: torch.save(value, rel / path)


def _save_image(path: str, image: Image.Image) -> Callable[[Path], None]:
    return lambda rel: image.save(rel / path)


def _extra_video(rel: Path) -> None:
    (rel / "videos" / "1").mkdir()


BAD_DATA = {
    "no prompts.json": (_remove("prompts.json"), "prompts.json: (file)", "not found"),
    "malformed prompts.json": (lambda rel: (rel / "prompts.json").write_text("{\"0\": {"), "prompts.json: line 1", "not valid JSON"),
    "index missing from prompts.json": (_extra_video, "prompts.json: 1", "missing entry for videos/1/"),
    "non-integer index": (lambda rel: edit_prompts(rel.parent, lambda d: d.update(x=d["0"])), "prompts.json: x", "non-negative integer"),
    "entities not a list": (lambda rel: edit_prompts(rel.parent, lambda d: d["0"].update(entities="cat")), "prompts.json: 0.entities", "list of at least 2"),
    "unknown key": (lambda rel: edit_prompts(rel.parent, lambda d: d["0"].update(predicates=["x"])), "prompts.json: 0.predicates", "unknown key"),
    "entity count != concept images": (lambda rel: edit_prompts(rel.parent, lambda d: d["0"]["entities"].append("fox")),
                                       "videos/0: (file)", "2 concept images"),
    "concept numbering gap": (lambda rel: (rel / "videos/0/concept1.png").rename(rel / "videos/0/concept2.png"),
                              "concept0.png", "missing concept image"),
    "no motion image": (_remove("videos/0/motion.png"), "motion.png: (file)", "image not found"),
    "unreadable image": (lambda rel: (rel / "videos/0/motion.png").write_bytes(b"not a png"), "motion.png: (file)", "not a readable image"),
    "no concept keypoints": (_remove("videos/0/concept_keyposes_two.pth"), "concept_keyposes_two.pth: (file)", "not found"),
    "keypoints wrong rank": (_save_tensor("videos/0/motion_keyposes.pth", torch.rand(2, 5)), "motion_keyposes.pth: keypoints",
                             "expected shape (instances, keypoints, 2)"),
    "concept keypoints wrong shape": (_save_tensor("videos/0/concept_keyposes_one.pth", torch.rand(1, 4, 2)),
                                      "concept_keyposes_one.pth: keypoints", "expected shape (1, 5, 2)"),
    "keypoints outside [0, 1]": (_save_tensor("videos/0/motion_keyposes.pth", torch.rand(2, 5, 2) + 0.5),
                                 "motion_keyposes.pth: keypoints", "normalised to [0, 1]"),
    "instances != entities": (_save_tensor("videos/0/motion_keyposes.pth", torch.rand(3, 5, 2)), "motion_keyposes.pth: keypoints",
                              "3 instances but prompts.json entry 0 names 2 entities"),
    "mask size": (_save_image("masks/0/motion1.png", Image.new("L", (32, 48), 255)), "motion1.png: (file)", "mask is 32x48 but motion.png is 64x48"),
    "empty mask": (_save_image("masks/0/motion0.png", Image.new("L", (64, 48), 0)), "motion0.png: (file)", "mask is empty"),
    "mask count != instances": (_remove("masks/0/motion1.png"), "motion_keyposes.pth: keypoints", "2 instances but 1 masks"),
    "no masks in the folder": (lambda rel: [p.unlink() for p in (rel / "masks/0").iterdir()], "motion_keyposes.pth: keypoints",
                               "2 instances but 0 masks"),
    "no mask folder": (lambda rel: shutil.rmtree(rel / "masks/0"),
                       "masks/0: (file)", "mask folder not found"),
    "predicate not in prompt": (lambda rel: edit_prompts(rel.parent, lambda d: d["0"].update(predicate=["hugging"])),
                                "prompts.json: 0.predicate", "'hugging' is not a word of the prompt"),
    "predicate cannot be derived": (lambda rel: edit_prompts(rel.parent, lambda d: d["0"].update(prompt="A cat and a dog.")),
                                    "prompts.json: 0.predicate", "cannot be derived"),
    "visibility shape": (_save_tensor("videos/0/motion_keyposes_visibility.pth", torch.ones(2, 4)),
                         "motion_keyposes.pth: keypoints", "expected a visibility tensor of shape (2, 5)"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_each_validation_error_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    root = make_relation(tmp_path)
    assert validate_relation_dir(root, "dance") == []
    spoil, where, what = BAD_DATA[case]
    spoil(root / "dance")
    problems = validate_relation_dir(root, "dance")
    assert any(where in str(p) and what in str(p) for p in problems), [str(p) for p in problems]
    with pytest.raises(TrainingDataError) as info:
        read_relation_dir(root, "dance")
    message = str(info.value)
    assert "\n" not in message and str(root / "dance") in message
    assert isinstance(info.value, RelbenchError)


def test_validate_collects_every_problem(tmp_path: Path) -> None:
    root = make_relation(tmp_path, examples=2)
    (root / "dance/videos/0/motion.png").unlink()
    Image.new("L", (64, 48), 0).save(root / "dance/masks/1/motion0.png")
    problems = validate_relation_dir(root, "dance")
    assert len(problems) == 2
    with pytest.raises(TrainingDataError, match=r"and 1 more problems"):
        read_relation_dir(root, "dance")


def test_missing_relation_folder(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match=r"relation folder not found"):
        read_relation_dir(tmp_path, "dance")


# ---------------------------------------------------------------------------------------------
# Instance association.


def _strip_masks(n: int, width: int = 60, height: int = 40) -> list[np.ndarray]:
    masks = []
    for j in range(n):
        mask = np.zeros((height, width), dtype=bool)
        mask[:, j * width // n:(j + 1) * width // n] = True
        masks.append(mask)
    return masks


def test_association_is_a_global_permutation() -> None:
    masks = _strip_masks(3)
    centres = torch.tensor([50.0, 10.0, 30.0]) / 60  # instance 0 on strip 2, 1 on strip 0, 2 on strip 1
    keypoints = torch.stack([torch.stack([torch.full((4,), c.item()), torch.linspace(0.1, 0.9, 4)], -1) for c in centres])
    perm = associate_instances(keypoints, masks)
    assert perm == [1, 2, 0]
    assert torch.equal(keypoints[perm][:, :, 0].mean(1) * 60, torch.tensor([10.0, 30.0, 50.0]))


def test_association_ignores_invisible_keypoints() -> None:
    masks = _strip_masks(2)
    # Instance 0's two visible points lie on strip 1, its three invisible (bogus) ones on strip 0;
    # instance 1 has two points on strip 0 and three on strip 1.
    keypoints = torch.tensor([[[0.1, 0.5], [0.1, 0.5], [0.1, 0.5], [0.8, 0.5], [0.9, 0.5]],
                              [[0.2, 0.5], [0.3, 0.5], [0.7, 0.6], [0.8, 0.6], [0.7, 0.4]]])
    visible = torch.tensor([[False, False, False, True, True], [True] * 5])
    assert associate_instances(keypoints, masks, visible) == [1, 0]
    assert associate_instances(keypoints, masks) == [0, 1]  # counting the bogus points would keep the order


def test_association_ties_fall_back_to_box_iou() -> None:
    # The right mask lies inside the left one, and every keypoint lies inside both, so the counts
    # tie; the boxes decide: instance 0 spans exactly the right mask's box, instance 1 is a small
    # cluster.
    left, right = np.zeros((40, 60), dtype=bool), np.zeros((40, 60), dtype=bool)
    left[:, 0:40] = True
    right[0:20, 20:40] = True
    keypoints = torch.tensor([[[20.5 / 60, 0.5 / 40], [39.5 / 60, 19.5 / 40]],
                              [[30.5 / 60, 10.5 / 40], [31.5 / 60, 11.5 / 40]]])
    scores = association_scores(keypoints, [left, right])
    assert np.floor(scores).tolist() == [[2, 2], [2, 2]]
    assert scores[1, 0] > scores[0, 0] and scores[1, 0] > scores[1, 1]
    assert associate_instances(keypoints, [left, right]) == [1, 0]


def test_association_needs_one_mask_per_instance() -> None:
    with pytest.raises(RelbenchError, match=r"2 keypoint instances but 3 masks"):
        associate_instances(torch.rand(2, 5, 2), _strip_masks(3))


# ---------------------------------------------------------------------------------------------
# Augmentation.


@pytest.mark.parametrize("skeleton", [AP10K, COCO], ids=lambda s: s.name)
def test_flip_mirrors_x_and_swaps_left_right(skeleton: Skeleton) -> None:
    transform = TripletTransform(32, hflip_p=1.0, skeleton=skeleton)
    keypoints = torch.rand(2, 17, 2, generator=torch.Generator().manual_seed(1))
    shown = torch.ones(2, 17, dtype=torch.bool)
    shown[1, 3] = False
    image = Image.new("RGB", (32, 32))
    _, _, xy, visible = transform(image, [], keypoints, shown, generator=0)
    for k in range(17):
        source = skeleton.flip_permutation()[k]
        assert torch.allclose(xy[:, k, 0], 1 - keypoints[:, source, 0])
        assert torch.equal(xy[:, k, 1], keypoints[:, source, 1])
    left_paw, right_paw = 7, 10
    if skeleton is AP10K:  # the mirrored animal's left paw is where its right paw's mirror is
        assert torch.allclose(xy[0, left_paw], torch.stack([1 - keypoints[0, right_paw, 0], keypoints[0, right_paw, 1]]))
    assert visible.sum() == 33 and not visible[1, skeleton.flip_permutation()[3]]


def test_crop_moves_keypoints_by_the_offset_and_hides_the_outside_ones() -> None:
    placement = Placement(box=(10, 20, 42, 52), flip=False, out_size=(16, 16))
    keypoints = torch.tensor([[[26 / 64, 36 / 64], [12 / 64, 50 / 64], [5 / 64, 30 / 64], [30 / 64, 60 / 64]]])
    shown = torch.tensor([[True, True, True, False]])
    xy, visible = placement.keypoints(keypoints, shown, (64, 64), None)
    assert torch.allclose(xy[0, 0], torch.tensor([0.5, 0.5]))
    assert torch.allclose(xy[0, 1], torch.tensor([2 / 32, 30 / 32]))
    assert visible.tolist() == [[True, True, False, False]]
    # The point left of the crop keeps its true coordinate instead of being clamped to the edge.
    assert xy[0, 2, 0].item() == pytest.approx((5 - 10) / 32)


def test_random_crop_uses_the_drawn_box() -> None:
    transform = TripletTransform(16, fit="crop", crop_scale=(0.5, 0.5))
    keypoints = torch.rand(1, 40, 2, generator=torch.Generator().manual_seed(0))
    shown = torch.ones(1, 40, dtype=torch.bool)
    image = Image.new("RGB", (64, 64))
    placement = transform.sample((64, 64), 7)
    left, top, right, bottom = placement.box
    assert (right - left, bottom - top) == (32, 32) and placement.out_size == (16, 16)
    out, _, xy, visible = transform(image, [], keypoints, shown, generator=7)
    assert out.size == (16, 16)
    assert torch.allclose(xy[..., 0], (keypoints[..., 0] * 64 - left) / 32)
    inside = ((keypoints[..., 0] * 64 >= left) & (keypoints[..., 0] * 64 <= right)
              & (keypoints[..., 1] * 64 >= top) & (keypoints[..., 1] * 64 <= bottom))
    assert torch.equal(visible, inside) and 0 < int(inside.sum()) < 40


def test_resize_keeps_normalised_coordinates() -> None:
    transform = TripletTransform((24, 32))  # (height, width), same aspect as 64 x 48
    keypoints = torch.rand(2, 6, 2, generator=torch.Generator().manual_seed(3))
    shown = torch.ones(2, 6, dtype=torch.bool)
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:30, 20:50] = True
    out, masks, xy, visible = transform(Image.new("RGB", (64, 48)), [mask], keypoints, shown, generator=0)
    assert out.size == (32, 24) and masks[0].shape == (24, 32)
    assert torch.allclose(xy, keypoints, atol=1e-6, rtol=0) and bool(visible.all())
    assert masks[0].sum() == 20 * 30 / 4 and masks[0][5:15, 10:25].all()


DOT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
BACKGROUND = (128, 128, 128)


DOTS = Skeleton("dots", ("L_a", "R_a", "L_b", "R_b"), ((0, 1), (2, 3)))


def check_dots_follow_keypoints(transform: TripletTransform, size: tuple[int, int], centres: list[tuple[int, int]],
                                half: int, seeds: int) -> tuple[int, int, int]:
    """Draw a coloured dot (side 2*half+1) at each of 4 keypoints of a ``size`` (w, h) image,
    transform it with ``seeds`` seeds and check each visible keypoint lands on its own dot, or
    after a flip on the dot of its mirror (DOTS' flip swaps 0<->1 and 2<->3). Returns
    (flips, hidden keypoints, checked keypoints)."""
    width, height = size
    array = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for (x, y), colour in zip(centres, DOT_COLOURS):
        array[y - half:y + half + 1, x - half:x + half + 1] = colour
    image = Image.fromarray(array)
    keypoints = torch.tensor([[[(x + 0.5) / width, (y + 0.5) / height] for x, y in centres]])
    shown = torch.ones(1, 4, dtype=torch.bool)
    palette = np.array(DOT_COLOURS + [BACKGROUND], dtype=np.float64)
    side = int(transform.resolution)  # a square output
    flips, hidden, checked = 0, 0, 0
    for seed in range(seeds):
        out, _, xy, visible = transform(image, [], keypoints, shown, generator=seed)
        flipped = transform.sample(size, seed).flip
        flips += flipped
        pixels = np.asarray(out, dtype=np.float64)
        for k in range(4):
            if not visible[0, k]:
                hidden += 1
                continue
            col, row = min(int(xy[0, k, 0] * side), side - 1), min(int(xy[0, k, 1] * side), side - 1)
            nearest = int(np.argmin(((palette - pixels[row, col]) ** 2).sum(1)))
            assert nearest == (DOTS.flip_permutation()[k] if flipped else k), (seed, k)
            checked += 1
    return flips, hidden, checked


def test_transformed_keypoints_land_on_the_same_colour() -> None:
    transform = TripletTransform(48, fit="crop", crop_scale=(0.55, 0.9), hflip_p=0.5, skeleton=DOTS)
    flips, hidden, checked = check_dots_follow_keypoints(transform, (96, 96), [(20, 24), (70, 30), (40, 70), (80, 80)], 5, 12)
    assert flips > 0 and hidden > 0 and checked > 20  # both flips and crops were exercised


def test_default_transform_is_the_reference_letterbox_without_flips() -> None:
    transform = TripletTransform(32)
    assert (transform.fit, transform.crop_p, transform.random_offset, transform.hflip_p) == ("letterbox", 0.5, True, 0.0)


def test_letterbox_keeps_a_non_square_image_and_every_keypoint() -> None:
    # 96 x 48 into 32 x 32: uncropped draws fit the whole image into a 32 x 16 band at a random
    # row (black above and below); the old square crop lost the left and right thirds.
    keypoints = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.02, 0.5], [0.98, 0.25], [0.5, 0.99]]])
    shown = torch.ones(1, 5, dtype=torch.bool)
    image = Image.new("RGB", (96, 48), (200, 100, 50))
    transform = TripletTransform(32)
    whole, cropped, rows = 0, 0, set()
    for seed in range(40):
        placement = transform.sample((96, 48), seed)
        out, _, xy, visible = transform(image, [], keypoints, shown, generator=seed)
        if placement.box != (0, 0, 96, 48):
            cropped += 1
            left = placement.box[0]
            assert placement.box == (left, 0, left + 48, 48) and placement.content_box == (0, 0, 32, 32)
            continue
        whole += 1
        x0, y0, x1, y1 = placement.content_box
        assert (x0, x1, y1 - y0) == (0, 32, 16)
        rows.add(y0)
        assert bool(visible.all()) and float(xy.min()) >= 0 and float(xy.max()) <= 1
        torch.testing.assert_close(xy[..., 0], keypoints[..., 0])
        torch.testing.assert_close(xy[..., 1], (y0 + keypoints[..., 1] * 16) / 32)
        pixels = np.asarray(out)
        assert (pixels[:y0] == 0).all() and (pixels[y1:] == 0).all()  # the letterbox is black
        assert (pixels[y0:y1] == (200, 100, 50)).all()
    assert whole > 10 and cropped > 10 and len(rows) > 3  # both branches and several offsets drawn
    # No crop, centred (what --augment none uses): always the whole image, in the middle.
    fixed = TripletTransform(32, crop_p=0.0, random_offset=False)
    assert {fixed.sample((96, 48), seed).content_box for seed in range(10)} == {(0, 8, 32, 24)}


def test_letterbox_crop_moves_keypoints_with_the_pixels_by_hand() -> None:
    # A 40 x 80 portrait image: the reference's crop keeps the top 64 rows; they are resized by
    # 0.5 to 20 x 32 and put at column 6 of a 32 x 32 canvas.
    array = np.full((80, 40, 3), BACKGROUND, dtype=np.uint8)
    array[46:56, 26:36] = DOT_COLOURS[0]  # a dot of 10 x 10 pixels centred on (31, 51)
    placement = Placement(box=(0, 0, 40, 64), flip=False, out_size=(32, 32), content=(6, 0, 26, 32))
    keypoints = torch.tensor([[[31 / 40, 51 / 80], [0.5, 70 / 80]]])
    xy, visible = placement.keypoints(keypoints, torch.ones(1, 2, dtype=torch.bool), (40, 80), None)
    # Crop coordinates (31 / 40, 51 / 64) -> canvas pixels (6 + 0.775 * 20, 0.796875 * 32) = (21.5, 25.5).
    assert xy[0, 0].tolist() == pytest.approx([21.5 / 32, 25.5 / 32], abs=1e-7)
    assert visible.tolist() == [[True, False]]  # the second point is below the crop
    out = np.asarray(placement.image(Image.fromarray(array)))
    assert tuple(out[25, 21]) == DOT_COLOURS[0] and (out[:, :6] == 0).all() and (out[:, 26:] == 0).all()
    # The draws for a portrait image: top-anchored, full width, between square and the whole height.
    transform = TripletTransform(32)
    heights = set()
    for seed in range(60):
        drawn = transform.sample((40, 80), seed)
        left, top, right, bottom = drawn.box
        assert (left, top, right) == (0, 0, 40) and 40 <= bottom <= 80
        x0, y0, x1, y1 = drawn.content_box
        assert y1 - y0 == 32 and 0 <= x0 and x1 <= 32 and abs((x1 - x0) / 32 - 40 / bottom) <= 1 / 32
        heights.add(bottom)
    assert 80 in heights and len(heights) > 10


def test_letterbox_keypoints_land_on_the_same_colour_with_crops_and_flips() -> None:
    # The default (reference) fit on a non-square image, with flips turned on.
    transform = TripletTransform(48, hflip_p=0.5, skeleton=DOTS)
    flips, hidden, checked = check_dots_follow_keypoints(transform, (128, 72), [(20, 24), (100, 30), (60, 50), (110, 60)], 6, 16)
    assert flips > 0 and hidden > 0 and checked > 30


def test_same_seed_same_draws() -> None:
    transform = TripletTransform(32, fit="crop", crop_scale=(0.3, 1.0), hflip_p=0.5, skeleton="ap10k")
    assert transform.sample((100, 80), 5) == transform.sample((100, 80), torch.Generator().manual_seed(5))
    draws = {transform.sample((100, 80), seed) for seed in range(10)}
    assert len(draws) == 10


def test_transform_refuses_bad_settings() -> None:
    with pytest.raises(RelbenchError, match=r"needs a skeleton"):
        TripletTransform(32, hflip_p=0.5)
    with pytest.raises(RelbenchError, match=r"crop_scale"):
        TripletTransform(32, crop_scale=(0.0, 1.0))
    with pytest.raises(RelbenchError, match=r"unknown skeleton 'horse'"):
        TripletTransform(32, skeleton="horse")
    with pytest.raises(RelbenchError, match=r"5 points per instance but skeleton 'ap10k' has 17"):
        TripletTransform(32, skeleton="ap10k")(Image.new("RGB", (8, 8)), [], torch.rand(1, 5, 2), torch.ones(1, 5, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# Dataset.


def test_three_subjects_with_shuffled_instances(tmp_path: Path) -> None:
    root = make_relation(tmp_path, n=3, k=5, order=[2, 0, 1], examples=2)
    triplets = read_relation_dir(root, "dance")
    assert triplets[0].entities == ("cat", "dog", "fox") and triplets[0].predicate == ("dancing",)
    assert triplets[0].concept_keypoints_files[2].name == "concept_keyposes_three.pth"
    dataset = TripletDataset(root, "dance", resolution=32,
                             transform=TripletTransform(32, fit="crop", crop_scale=(0.8, 1.0), hflip_p=0.5, skeleton=Skeleton("five", ("a",) * 5, ())))
    item = dataset[0]
    assert item["association"].tolist() == [1, 2, 0]
    assert item["motion_pixel_values"].shape == (3, 32, 32)
    assert item["concept_pixel_values"].shape == (3, 3, 32, 32)
    assert item["motion_masks"].shape == (3, 1, 32, 32)
    assert item["motion_keypoints"].shape == (3, 5, 2) and item["motion_visibility"].shape == (3, 5)
    assert item["concept_keypoints"].shape == (3, 5, 2) and item["concept_visibility"].shape == (3, 5)
    # Entity i's visible keypoints lie in entity i's transformed mask.
    for entity in range(3):
        mask = item["motion_masks"][entity, 0]
        for (x, y), seen in zip(item["motion_keypoints"][entity].tolist(), item["motion_visibility"][entity].tolist()):
            if seen:
                assert mask[min(int(y * 32), 31), min(int(x * 32), 31)] == 1
    batch = collate([dataset[0], dataset[1]])
    assert batch["motion_keypoints"].shape == (2, 3, 5, 2) and batch["concept_pixel_values"].shape == (2, 3, 3, 32, 32)
    assert batch["prompt"] == [item["prompt"]] * 2 and batch["index"] == [0, 1]


def test_dataset_is_deterministic_with_a_seed(tmp_path: Path) -> None:
    root = make_relation(tmp_path, examples=2)
    transform = TripletTransform(24, fit="crop", crop_scale=(0.5, 1.0), hflip_p=0.5, skeleton=Skeleton("five", ("a",) * 5, ()))
    first = TripletDataset(root, "dance", resolution=24, transform=transform, seed=3)[1]
    second = TripletDataset(root, "dance", resolution=24, transform=transform, seed=3)[1]
    for key, value in first.items():
        assert torch.equal(value, second[key]) if isinstance(value, torch.Tensor) else value == second[key]
    other = TripletDataset(root, "dance", resolution=24, transform=transform, seed=3)
    epochs = []
    for epoch in range(4):
        other.set_epoch(epoch)
        epochs.append(other[1]["motion_keypoints"])
    assert torch.equal(epochs[0], first["motion_keypoints"])
    assert any(not torch.equal(epochs[0], e) for e in epochs[1:])


def test_collate_refuses_mixed_subject_counts(tmp_path: Path) -> None:
    two = TripletDataset(make_relation(tmp_path / "a", n=2), "dance", resolution=16)[0]
    three = TripletDataset(make_relation(tmp_path / "b", n=3), "dance", resolution=16)[0]
    with pytest.raises(RelbenchError, match=r"different \(entities, keypoints\)"):
        collate([two, three])


def test_dataset_resolution_must_match_the_transform(tmp_path: Path) -> None:
    with pytest.raises(RelbenchError, match=r"transform resolution \(32, 32\) differs from resolution \(64, 64\)"):
        TripletDataset(make_relation(tmp_path), "dance", resolution=64, transform=TripletTransform(32))
