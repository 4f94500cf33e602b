"""Caption metrics: our CIDEr-D equals the COCO caption evaluation's (pycocoevalcap's CiderScorer) per
caption and over the corpus, also when its states are gathered from two ranks; torchmetrics' BLEU equals
pycocoevalcap's Bleu; coco_scores runs the official Java scorers and leaves no process behind."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from torchmetrics.text import BLEUScore

from lightning_seq.modules import caption_metrics
from lightning_seq.modules.caption_metrics import CIDErD, bleu_texts, caption_words, cider_d, coco_scores

# Twenty images, five human captions each, in the style of COCO's (written for this test).
REFERENCES = [
    [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave in the ocean.",
        "A person on a surfboard riding a big wave.",
        "Surfer in a black wetsuit catching a wave.",
        "A man surfing on a sunny day at the beach.",
    ],
    [
        "Two giraffes standing next to each other near trees.",
        "A pair of giraffes eating leaves from a tall tree.",
        "Two giraffes in a grassy field by some trees.",
        "Giraffes standing in an enclosure at the zoo.",
        "Two tall giraffes reaching up into the branches.",
    ],
    [
        "A plate of food with broccoli, rice and chicken.",
        "A white plate topped with chicken and vegetables.",
        "Chicken and broccoli served over rice on a plate.",
        "A healthy meal of rice, broccoli and grilled chicken.",
        "A dinner plate with meat, rice and green vegetables.",
    ],
    [
        "A red double decker bus driving down a city street.",
        "A double decker bus is parked on the side of the road.",
        "A large red bus travels through the town.",
        "The red bus drives past tall buildings.",
        "A two story bus on a busy street in London.",
    ],
    [
        "A cat sleeping on top of a laptop keyboard.",
        "A gray cat is lying on an open laptop.",
        "A kitten curled up on a computer keyboard.",
        "A cat naps on the keys of a laptop computer.",
        "A fluffy cat resting on a laptop on a desk.",
    ],
    [
        "A baseball player swinging a bat at a ball.",
        "A batter hits the ball during a baseball game.",
        "A man in a uniform swings at a pitch.",
        "The batter swings while the catcher waits behind him.",
        "A baseball game with a player at home plate.",
    ],
    [
        "A kitchen with white cabinets and a stainless steel refrigerator.",
        "A clean kitchen with a stove, sink and fridge.",
        "A small kitchen with wooden floors and white cupboards.",
        "An empty kitchen with modern appliances.",
        "A kitchen that has a window over the sink.",
    ],
    [
        "A group of people flying kites in a park.",
        "Several kites flying in the sky over a field.",
        "People standing on the grass watching colorful kites.",
        "A crowd gathers in a park to fly kites.",
        "Many kites in a blue sky above a grassy hill.",
    ],
    [
        "A dog catching a frisbee in the air.",
        "A brown dog jumps to catch a flying disc.",
        "A dog leaping up to grab a frisbee in a yard.",
        "The dog is jumping high to catch the frisbee.",
        "A happy dog playing frisbee on the lawn.",
    ],
    [
        "A train traveling down the tracks next to a forest.",
        "A passenger train moving along the railroad tracks.",
        "A long train going past some green trees.",
        "A yellow and blue train on a railway line.",
        "The train is coming around a bend in the tracks.",
    ],
    [
        "A woman holding an umbrella in the rain.",
        "A lady walks down the street with a black umbrella.",
        "A person under an umbrella on a rainy day.",
        "A woman with an umbrella crossing a wet street.",
        "Someone holding an open umbrella while it rains.",
    ],
    [
        "A pizza with cheese and pepperoni on a wooden table.",
        "A large pizza sitting on top of a table.",
        "A freshly baked pizza with melted cheese.",
        "A whole pepperoni pizza on a cutting board.",
        "A hot pizza is ready to be sliced and eaten.",
    ],
    [
        "A herd of elephants walking across a dry field.",
        "Elephants walking together through the grass.",
        "A mother elephant and her baby in the wild.",
        "Several elephants crossing a dusty plain.",
        "A group of elephants moving near a watering hole.",
    ],
    [
        "A man sitting on a bench reading a newspaper.",
        "An older man reads the paper on a park bench.",
        "A person sits on a wooden bench in the park.",
        "A man relaxing on a bench under a tree.",
        "Someone on a bench looking at a newspaper.",
    ],
    [
        "A bathroom with a toilet, sink and a mirror.",
        "A small white bathroom with a shower.",
        "A clean bathroom with tiled walls and a toilet.",
        "The bathroom has a sink below a large mirror.",
        "A bathroom with a bathtub next to the toilet.",
    ],
    [
        "A young boy skateboarding down a ramp.",
        "A kid doing a trick on a skateboard at a skate park.",
        "A boy riding his skateboard on a concrete ramp.",
        "A skateboarder jumps off the edge of a ramp.",
        "A child in a helmet rides a skateboard.",
    ],
    [
        "A vase filled with red and yellow flowers.",
        "Flowers in a glass vase on a table.",
        "A bouquet of roses sitting in a clear vase.",
        "A table with a vase of fresh flowers.",
        "Colorful flowers arranged in a small vase by a window.",
    ],
    [
        "An airplane flying through a clear blue sky.",
        "A large passenger jet in the air.",
        "A white plane flies high above the clouds.",
        "A jet airliner taking off from the runway.",
        "A commercial airplane soaring in the sky.",
    ],
    [
        "A horse grazing in a green pasture.",
        "A brown horse eating grass in a field.",
        "A horse standing behind a wooden fence.",
        "A single horse in a meadow on a sunny day.",
        "A horse with a white stripe on its face grazes.",
    ],
    [
        "People skiing down a snowy mountain slope.",
        "A skier going down a hill covered in snow.",
        "Two people on skis at the top of a mountain.",
        "A group of skiers on a snow covered slope.",
        "Skiers riding a ski lift up the mountain.",
    ],
]

# One hypothesis per image, of every quality: exact copies, partial, close paraphrases, unrelated, empty.
HYPOTHESES = [
    "A man riding a wave on top of a surfboard.",  # exact copy
    "two giraffes standing near some trees",
    "a plate of chicken with rice and broccoli",
    "a bus",  # very short
    "A cat sleeping on top of a laptop keyboard.",  # exact copy
    "a man playing tennis on a court",  # unrelated
    "",  # empty
    "a group of people flying kites in a park on a sunny day",
    "a dog jumping to catch a frisbee",
    "a train on the tracks",
    "a woman with an umbrella",
    "a pizza pizza pizza on a table",  # repeated words
    "a herd of elephants",
    "a man sitting on a bench in the park reading a newspaper next to a tree on a sunny afternoon",  # long
    "a bathroom with a toilet and a sink",
    "a boy riding a skateboard",
    "a vase of flowers",
    "a plane in the sky",
    "a horse",
    "the the the the the",  # degenerate
]


def normalised(texts):
    return [" ".join(caption_words(t)) for t in texts]


def coco_cider(hypotheses, references):
    """pycocoevalcap's CiderScorer fed the same normalised words (its PTBTokenizer needs Java)."""
    scorer_module = pytest.importorskip("pycocoevalcap.cider.cider_scorer", reason="pycocoevalcap missing")
    scorer = scorer_module.CiderScorer(n=4, sigma=6.0)
    for hyp, refs in zip(normalised(hypotheses), [normalised(r) for r in references], strict=True):
        scorer += (hyp, refs)
    corpus, each = scorer.compute_score()
    return float(corpus), [float(s) for s in each]


def assert_same_cider(hypotheses, references):
    expected_corpus, expected_each = coco_cider(hypotheses, references)
    corpus, each = cider_d(hypotheses, references)
    assert corpus == pytest.approx(expected_corpus, abs=1e-6)
    assert each == pytest.approx(expected_each, abs=1e-6)
    metric = CIDErD()
    for start in range(0, len(hypotheses), 3):  # in batches, as validation feeds it
        metric.update(hypotheses[start : start + 3], references[start : start + 3])
    assert metric.compute().item() == pytest.approx(expected_corpus, abs=1e-6)
    assert metric.compute_each().tolist() == pytest.approx(expected_each, abs=1e-6)
    return each


# ------------------------------------------------------------------------------------------ normalisation


def test_caption_words_lower_cases_deletes_punctuation_and_splits_on_whitespace():
    assert caption_words("A Dog's  ball,\tblack-and-white;\n“quoted” — Café!") == [
        "a", "dogs", "ball", "blackandwhite", "quoted", "café",
    ]  # fmt: skip
    assert caption_words("") == [] and caption_words(" .,!? ") == []
    for text in HYPOTHESES + REFERENCES[0]:
        words = caption_words(text)
        assert caption_words(" ".join(words)) == words  # idempotent: stored states re-normalise to themselves


# ---------------------------------------------------------------------------------------------- CIDEr-D


def test_cider_d_equals_coco_cider_scorer_on_twenty_images_of_five_human_captions():
    each = assert_same_cider(HYPOTHESES, REFERENCES)
    assert each[6] == 0.0  # the empty hypothesis
    assert each[5] < 0.2 < each[1]  # an unrelated caption scores far below a good one
    assert each[0] > 1.0 and each[4] > 1.0  # exact copies of a reference score high


def test_cider_d_clips_repeated_n_grams_like_coco():
    references = [
        ["a dog on the grass", "a dog plays on the grass", "the dog runs on green grass"],
        ["a red car on the road", "a car parked by the road", "the red car is on a street"],
        ["a cat on a sofa", "a cat lying on the sofa", "the cat sleeps on a couch"],
    ]
    repeated = ["dog dog dog dog grass grass grass", "a red car a red car a red car", "cat cat cat cat cat"]
    once = ["dog grass", "a red car", "cat"]
    each = assert_same_cider(repeated, references)
    assert_same_cider(once, references)
    # Clipping: repeating an n-gram the references hold once cannot raise its weight above theirs.
    unclipped = _unclipped_cider(repeated, references)
    assert all(u > c for u, c in zip(unclipped, each, strict=True))


def _unclipped_cider(hypotheses, references):
    """CIDEr-D with the min() removed (plain TF-IDF cosine), to show that the clipping is exercised."""
    from unittest import mock

    with mock.patch.object(caption_metrics, "min", lambda a, b: a, create=True):
        return cider_d(hypotheses, references)[1]


def test_cider_d_length_penalty_matches_coco_and_punishes_long_and_short_captions():
    base = [refs[0] for refs in REFERENCES]  # exact copies
    padded = [h + " and some more words that nobody wrote about the picture at all" for h in base]
    cut = [" ".join(caption_words(h)[:2]) for h in base]
    exact = assert_same_cider(base, REFERENCES)
    long = assert_same_cider(padded, REFERENCES)
    short = assert_same_cider(cut, REFERENCES)
    assert all(e > x for e, x in zip(exact, long, strict=True))
    assert all(e > x for e, x in zip(exact, short, strict=True))
    one_word = assert_same_cider(["surfer", "giraffes", ""], REFERENCES[:3])  # bigram lengths 0 on both sides
    assert one_word[2] == 0.0


def test_cider_d_metric_round_trips_unicode_and_reports_captions_in_order():
    metric = CIDErD()
    metric.update(["Un café, s'il vous plaît", ""], [["un café noir", "deux cafés"], ["le thé"]])
    metric.update(["ein Bäcker"], [["der Bäcker backt", "ein Bäcker"]])
    hyps, refs = metric.captions()
    assert hyps == ["un café sil vous plaît", "", "ein bäcker"]
    assert refs == [["un café noir", "deux cafés"], ["le thé"], ["der bäcker backt", "ein bäcker"]]
    assert metric.compute_each().shape == (3,)
    assert metric.compute().dtype == torch.float64


def test_cider_d_with_nothing_or_one_image_is_zero_and_bad_input_is_refused():
    assert cider_d([], []) == (0.0, [])
    assert cider_d(["a dog"], [["a dog"]]) == (0.0, [0.0])  # one image: every IDF is log 1 - log 1
    metric = CIDErD()
    assert metric.compute_each().tolist() == [] and metric.captions() == ([], [])
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        metric.update(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="image 0 has no list of reference captions"):
        metric.update(["a"], [[]])
    with pytest.raises(TypeError):
        cider_d("a dog", [["a dog"]])


def _filled(hypotheses, references, batch=4):
    metric = CIDErD()
    for start in range(0, len(hypotheses), batch):
        metric.update(hypotheses[start : start + batch], references[start : start + batch])
    return metric


def test_two_ranks_merged_equal_one_metric_over_all_images():
    one = _filled(HYPOTHESES, REFERENCES, batch=20)
    expected_corpus, expected_each = coco_cider(HYPOTHESES, REFERENCES)
    assert one.compute().item() == pytest.approx(expected_corpus, abs=1e-6)
    first, second = _filled(HYPOTHESES[:13], REFERENCES[:13]), _filled(HYPOTHESES[13:], REFERENCES[13:])
    second.merge_state(first)  # torchmetrics puts the incoming state first: first's images, then second's
    assert second.compute().item() == pytest.approx(one.compute().item(), abs=1e-12)
    assert second.compute_each().tolist() == pytest.approx(one.compute_each().tolist(), abs=1e-12)
    assert second.captions() == one.captions()
    # What torchmetrics' sync does: each rank's list concatenated, all-gathered, concatenated again (a rank
    # that saw nothing sends its empty typed tensors).
    ranks = [_filled(HYPOTHESES[:13], REFERENCES[:13]), CIDErD(), _filled(HYPOTHESES[13:], REFERENCES[13:])]
    gathered = CIDErD()
    for name in ("hyp_bytes", "hyp_lengths", "ref_bytes", "ref_lengths", "ref_counts"):
        setattr(gathered, name, torch.cat([torch.cat(getattr(r, name)) for r in ranks]))
    assert gathered.compute_each().tolist() == pytest.approx(expected_each, abs=1e-6)
    assert gathered.captions() == one.captions()
    one.reset()
    assert one.captions() == ([], []) and one.hyp_bytes[0].dtype == torch.uint8


DDP_SCRIPT = """
import json, os, socket, sys
import torch.distributed as dist, torch.multiprocessing as mp
from lightning_seq.modules.caption_metrics import CIDErD


def rank_main(rank, port, data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    hyps, refs = data["hypotheses"], data["references"]
    uneven, idle = CIDErD(), CIDErD()
    lo, hi = (0, 13) if rank == 0 else (13, 20)
    for start in range(lo, hi, 4):
        end = min(start + 4, hi)
        uneven.update(hyps[start:end], refs[start:end])
    if rank == 0:  # rank 1 sees no image at all
        idle.update(hyps, refs)
    result = {name: {"corpus": m.compute().item(), "each": m.compute_each().tolist(), "hyps": m.captions()[0]}
              for name, m in (("uneven", uneven), ("idle", idle))}
    with open(f"{out}{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(sys.argv[1]) as f:
        data = json.load(f)
    mp.spawn(rank_main, args=(port, data, sys.argv[2]), nprocs=2, join=True)
"""


@pytest.mark.slow
def test_two_real_gloo_ranks_gather_the_captions_of_the_whole_set(tmp_path):
    """Uneven shares (13 and 7 images) and a rank with no image: every rank computes the one-process score."""
    script, data = tmp_path / "two_ranks.py", tmp_path / "captions.json"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    data.write_text(json.dumps({"hypotheses": HYPOTHESES, "references": REFERENCES}), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), str(data), str(tmp_path / "rank")], capture_output=True, text=True,
        timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected_corpus, expected_each = coco_cider(HYPOTHESES, REFERENCES)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for case in ("uneven", "idle"):
            assert result[case]["corpus"] == pytest.approx(expected_corpus, abs=1e-6)
            assert result[case]["each"] == pytest.approx(expected_each, abs=1e-6)
            assert result[case]["hyps"] == normalised(HYPOTHESES)


# ------------------------------------------------------------------------------------------------- BLEU


def coco_bleu(hypotheses, references):
    bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu", reason="pycocoevalcap missing")
    gts = {i: normalised(refs) for i, refs in enumerate(references)}
    res = {i: [h] for i, h in enumerate(normalised(hypotheses))}
    scores, _ = bleu_module.Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in scores]


def torchmetrics_bleu(hypotheses, references):
    refs = [normalised(r) for r in references]
    return [BLEUScore(n_gram=n)(normalised(hypotheses), refs).item() for n in range(1, 5)]


def prepared_bleu(hypotheses, references):
    hyps, refs = bleu_texts(hypotheses, references)
    return [BLEUScore(n_gram=n)(hyps, refs).item() for n in range(1, 5)]


def test_torchmetrics_bleu_over_bleu_texts_equals_coco_bleu_with_five_references():
    expected = coco_bleu(HYPOTHESES, REFERENCES)
    assert prepared_bleu(HYPOTHESES, REFERENCES) == pytest.approx(expected, abs=1e-6)
    assert 0.1 < expected[3] < expected[0] < 1
    # Fed the references as they come, torchmetrics breaks ties of closest length differently: the
    # difference that the module docstring states.
    plain = torchmetrics_bleu(HYPOTHESES, REFERENCES)
    assert plain[3] == pytest.approx(0.4550, abs=1e-4) and expected[3] == pytest.approx(0.4619, abs=1e-4)
    assert plain[0] == pytest.approx(0.6915, abs=1e-4) and expected[0] == pytest.approx(0.7021, abs=1e-4)


def test_bleu_differs_only_when_the_closest_reference_length_is_a_tie():
    """pycocoevalcap breaks a tie of closest reference lengths towards the shorter, torchmetrics towards
    the reference listed first: here 5 versus 3 words for a 4-word hypothesis, a brevity penalty of
    exp(1 - 5/4) = 0.7788 instead of 1."""
    hypotheses, references = ["a dog on grass"], [["a dog on grass today", "a dog on"]]
    coco = coco_bleu(hypotheses, references)
    assert coco == pytest.approx([1.0] * 4, abs=1e-6)
    assert torchmetrics_bleu(hypotheses, references) == pytest.approx([math.exp(1 - 5 / 4)] * 4, abs=1e-6)
    assert prepared_bleu(hypotheses, references) == pytest.approx(coco, abs=1e-6)


# ------------------------------------------------------------------------------- official COCO scores


def _children() -> set[int]:
    """Processes whose parent is this one."""
    me, found = str(os.getpid()), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(pid))
    return found


@pytest.mark.slow
@pytest.mark.skipif(
    caption_metrics.coco_scores_unavailable() is not None,
    reason=f"official COCO scores unavailable: {caption_metrics.coco_scores_unavailable()}",
)
def test_coco_scores_run_the_official_scorers_and_their_cider_is_ours():
    hypotheses, references = normalised(HYPOTHESES), [normalised(r) for r in REFERENCES]
    before = _children()
    start = time.perf_counter()
    scores = coco_scores(hypotheses, references)
    took = time.perf_counter() - start
    assert set(scores) == set(caption_metrics.COCO_KEYS)
    assert all(0 <= scores[k] <= 1 for k in scores if k != "cider"), scores
    assert 0 < scores["bleu4"] < scores["bleu3"] < scores["bleu2"] < scores["bleu1"] < 1
    assert 0 < scores["meteor"] < 1 and 0 < scores["rouge_l"] < 1
    assert scores["cider"] == pytest.approx(cider_d(hypotheses, references)[0], abs=1e-6)
    assert scores["bleu4"] == pytest.approx(coco_bleu(hypotheses, references)[3], abs=1e-9)
    assert _children() <= before, f"java processes left running after {took:.1f} s"


def test_coco_scores_say_why_they_are_unavailable(monkeypatch):
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    if caption_metrics.importlib.util.find_spec("pycocoevalcap") is not None:
        assert "java is not on PATH" in caption_metrics.coco_scores_unavailable()
    assert coco_scores(["a dog"], [["a dog"]]) is None
    monkeypatch.setattr(caption_metrics.importlib.util, "find_spec", lambda name: None)
    assert "pycocoevalcap is not installed" in caption_metrics.coco_scores_unavailable()
