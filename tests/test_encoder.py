"""Target injection and the LXMERT encoder, on a tiny LXMERT loaded back from disk."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from extract.encoder import Encoder, Example, TargetFeatures, collate, inject_target, iou, lxmert_forward
from extract.games import Game, Object, Turn
from extract.regions import ImageRegions, RegionStore


def hand_game(bbox: tuple[float, float, float, float] = (100, 50, 200, 100)) -> Game:
    objects = (Object(5, "cup", 47, bbox), Object(6, "dog", 18, (0, 0, 10, 10)))
    return Game(1, "COCO_val2014_000000000001", 400, 200, 5, objects, "success", (Turn(1, "is it a cup?", 1),))


def hand_regions() -> ImageRegions:
    boxes = np.array([[0, 0, 10, 10], [110, 60, 290, 150], [0, 0, 400, 200]], dtype=np.float32)
    features = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    return ImageRegions(features=features, boxes=boxes, height=200, width=400)


def test_target_goes_into_last_slot_with_corner_box() -> None:
    visual = inject_target(hand_game(), hand_regions())
    # [x, y, w, h] = [100, 50, 200, 100] in 400x200 → x1/W, y1/H, x2/W, y2/H
    np.testing.assert_allclose(visual.boxes[-1], [0.25, 0.25, 0.75, 0.75])
    np.testing.assert_allclose(visual.boxes[1], [110 / 400, 60 / 200, 290 / 400, 150 / 200])
    # nearest region by IoU is region 1 (the box 110,60,290,150), so its features fill the target slot
    np.testing.assert_array_equal(visual.features[-1], hand_regions().features[1])
    np.testing.assert_array_equal(visual.features[:2], hand_regions().features[:2])


def test_iou_hand_values() -> None:
    box = np.array([0, 0, 10, 10], dtype=np.float32)
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=np.float32)
    np.testing.assert_allclose(iou(box, boxes), [1.0, 50 / 150, 0.0])


def test_target_features_from_file(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "targets.h5", "w") as h5:
        h5["5"] = np.full(4, 7.0, dtype=np.float32)
    visual = inject_target(hand_game(), hand_regions(), TargetFeatures(tmp_path / "targets.h5"))
    np.testing.assert_array_equal(visual.features[-1], np.full(4, 7.0))


def test_tokenizer_knows_every_fixture_word(tiny_lxmert: Path, sample_games: dict) -> None:
    encoder = Encoder.load(str(tiny_lxmert))
    questions = [t.question for games in sample_games.values() for g in games for t in g.turns]
    ids = encoder.tokenizer(questions)["input_ids"]
    assert all(encoder.tokenizer.unk_token_id not in row for row in ids)
    assert encoder.tokenizer.decode(ids[0][1:-1]) == questions[0].lower()


def test_batched_encoding_equals_one_at_a_time(tiny_lxmert: Path, sample_games: dict, sample_regions: Path) -> None:
    encoder = Encoder.load(str(tiny_lxmert))
    store = RegionStore(sample_regions)
    examples = [
        Example(t.question, inject_target(g, store[g.image])) for g in sample_games["test"][:3] for t in g.turns
    ]
    pooled, vision = encoder.encode(examples, batch_size=7)
    for i in (0, 5, len(examples) - 1):
        p, v = encoder.encode([examples[i]], batch_size=1)
        np.testing.assert_allclose(pooled[i], p[0], atol=1e-5)
        np.testing.assert_allclose(vision[i], v[0], atol=1e-5)
    assert pooled.shape == (len(examples), 32) and not np.allclose(pooled[0], pooled[1])


def test_vision_run_once_per_game_equals_lxmert_own_forward(
    tiny_lxmert: Path, sample_games: dict, sample_regions: Path
) -> None:
    encoder = Encoder.load(str(tiny_lxmert))
    store = RegionStore(sample_regions)
    examples = [
        Example(t.question, visual)
        for g in sample_games["test"][:3]
        for visual in [inject_target(g, store[g.image])]
        for t in g.turns
    ]
    batch = collate(examples, encoder.tokenizer, 32)
    assert len(set(batch["visual_group"].tolist())) == 3 < len(examples)
    with torch.inference_mode():
        shared = lxmert_forward(encoder.model, batch, share_vision=True)
        plain = lxmert_forward(encoder.model, batch)
    for ours, theirs in zip(shared, plain, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert len(encoder.model.encoder.r_layers) == 1  # the vision layers are back in place


def test_questions_truncated_at_32_tokens(tiny_lxmert: Path, sample_regions: Path, sample_games: dict) -> None:
    encoder = Encoder.load(str(tiny_lxmert))
    game = sample_games["test"][0]
    visual = inject_target(game, RegionStore(sample_regions)[game.image])

    def pooled(words: list[str]) -> np.ndarray:
        return encoder.encode([Example(" ".join(words), visual)])[0][0]

    words = ["is", "it"] * 15  # 30 words + [CLS] + [SEP] = 32 tokens
    np.testing.assert_allclose(pooled(words + ["is"]), pooled(words + ["it"]), atol=1e-6)  # word 31 is cut
    assert not np.allclose(pooled(words[:29] + ["is"]), pooled(words[:29] + ["it"]), atol=1e-4)  # word 30 is read


def test_batches_keep_games_together_and_similar_lengths(
    tiny_lxmert: Path, sample_regions: Path, sample_games: dict
) -> None:
    encoder = Encoder.load(str(tiny_lxmert))
    store = RegionStore(sample_regions)
    visuals = [inject_target(g, store[g.image]) for g in sample_games["test"][:4]]  # four games
    short, long = "is it?", " ".join(["is it"] * 10)
    examples = [Example(short if game % 2 == 0 else long, visuals[game]) for game in range(4) for _ in range(2)]
    widths, vision_rows = [], []
    hooks = [
        encoder.model.register_forward_hook(
            lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
        ),
        encoder.model.encoder.r_layers[0].register_forward_hook(lambda m, args, out: vision_rows.append(len(args[0]))),
    ]
    try:
        pooled, vision = encoder.encode(examples, batch_size=4)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(widths) == [5, 22]  # the two short games in one batch, the two long ones in the other
    assert vision_rows == [2, 2]  # vision layers once per game, not once per question
    for i in (0, 3, 6):  # rows come back in the order given, equal to one question at a time
        alone_pooled, alone_vision = encoder.encode([examples[i]])
        np.testing.assert_allclose(pooled[i], alone_pooled[0], atol=1e-5)
        np.testing.assert_allclose(vision[i], alone_vision[0], atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_close_to_cpu_fp32(tiny_lxmert: Path, sample_games: dict, sample_regions: Path) -> None:
    store = RegionStore(sample_regions)
    examples = [Example(t.question, inject_target(g, store[g.image])) for g in sample_games["test"] for t in g.turns]
    cpu, _ = Encoder.load(str(tiny_lxmert)).encode(examples)
    gpu, _ = Encoder.load(str(tiny_lxmert), device="cuda", precision="bf16").encode(examples)
    np.testing.assert_allclose(gpu, cpu, atol=5e-2)
