"""relbench.keypoints: the one skeleton table and the one keypoint-file reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from relbench.errors import RelbenchError
from relbench.keypoints import AP10K, COCO, SKELETONS, KeypointFileError, get_skeleton, load_pose, visibility_file


def test_flip_pairs_are_left_right_names() -> None:
    for skeleton in (AP10K, COCO):
        perm = skeleton.flip_permutation()
        assert [perm[p] for p in perm] == list(range(17))  # an involution
        assert len(skeleton.flip_pairs) == sum(name.startswith("l_") for name in skeleton.keypoints)
        for a, b in skeleton.flip_pairs:
            assert skeleton.keypoints[a].startswith("l_") and skeleton.keypoints[b] == "r_" + skeleton.keypoints[a][2:]
    assert AP10K.keypoints[7] == "l_f_paw" and AP10K.flip_permutation()[7] == AP10K.keypoints.index("r_f_paw")


def test_every_skeleton_has_one_sigma_per_keypoint() -> None:
    assert set(SKELETONS) == {"coco", "ap10k"}
    for skeleton in SKELETONS.values():
        assert skeleton.size == len(skeleton.sigmas) == 17
    # Symmetric parts share a sigma (pycocotools' and AP-10K's tables).
    for skeleton in SKELETONS.values():
        for a, b in skeleton.flip_pairs:
            assert skeleton.sigmas[a] == skeleton.sigmas[b]
    assert COCO.sigmas[COCO.keypoints.index("nose")] == 0.026 and AP10K.sigmas[AP10K.keypoints.index("nose")] == 0.026
    assert get_skeleton("coco") is COCO
    with pytest.raises(RelbenchError, match=r"unknown skeleton 'smpl'; expected one of coco, ap10k"):
        get_skeleton("smpl")


def test_visibility_from_third_channel_or_separate_file(tmp_path: Path) -> None:
    points = torch.rand(2, 5, 2)
    flags = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.float32)
    torch.save(torch.cat([points, flags[..., None]], -1), tmp_path / "three.pth")
    xy, shown = load_pose(tmp_path / "three.pth")
    assert torch.equal(xy, points) and torch.equal(shown, flags.bool())

    torch.save(points, tmp_path / "two.pth")
    torch.save(flags.bool(), tmp_path / "two_visibility.pth")
    assert visibility_file(tmp_path / "two.pth") == tmp_path / "two_visibility.pth"
    xy, shown = load_pose(tmp_path / "two.pth")
    assert torch.equal(xy, points) and torch.equal(shown, flags.bool())

    torch.save(points, tmp_path / "plain.pth")
    assert bool(load_pose(tmp_path / "plain.pth")[1].all())

    # An invisible keypoint may carry any finite coordinate (COCO writes 0, others -1), in both forms.
    odd = torch.cat([points, flags[..., None]], -1)
    odd[0, 2, :2] = -1.0
    torch.save(odd, tmp_path / "odd.pth")
    assert load_pose(tmp_path / "odd.pth")[0][0, 2].tolist() == [-1.0, -1.0]
    torch.save(odd[..., :2], tmp_path / "two.pth")  # the old reader refused it before seeing the visibility file
    assert load_pose(tmp_path / "two.pth")[0][0, 2].tolist() == [-1.0, -1.0]

    torch.save(torch.ones(2, 5, dtype=torch.bool), tmp_path / "three_visibility.pth")
    with pytest.raises(RelbenchError, match=r"three_visibility.pth: three.pth already has a visibility channel"):
        load_pose(tmp_path / "three.pth")


@pytest.mark.parametrize(("value", "message"), [
    (torch.rand(2, 17, 4), "expected shape (instances, keypoints, 2), or (instances, keypoints, 3) with a visibility channel, "
                           "got (2, 17, 4)"),
    (torch.ones(2, 17, 2, dtype=torch.long), "expected floating-point keypoints, got torch.int64"),
    (torch.full((1, 17, 2), float("nan")), "keypoints must be finite numbers"),
    (torch.full((1, 17, 2), 1.5), "visible keypoints must be normalised to [0, 1], got values in [1.500, 1.500]"),
    ({"not": "a tensor"}, "expected a tensor of shape"),
])
def test_bad_keypoint_files_are_one_line_errors(tmp_path: Path, value: object, message: str) -> None:
    path = tmp_path / "pose.pth"
    torch.save(value, path)
    with pytest.raises(KeypointFileError) as info:
        load_pose(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_empty_pose_has_no_instance(tmp_path: Path) -> None:
    torch.save(torch.zeros(0, 17, 2), tmp_path / "empty.pth")
    xy, shown = load_pose(tmp_path / "empty.pth")
    assert xy.shape == (0, 17, 2) and shown.shape == (0, 17)
