"""Caption metrics: CIDEr-D as a torchmetrics metric, and the official COCO scores when they can run.

* :func:`caption_words` is the one text normalisation of the captioning family: lower-case, delete
  punctuation, split on whitespace (Karpathy's COCO preprocessing). BLEU and CIDEr-D both read
  captions through it.
* :func:`bleu_texts` prepares captions for torchmetrics' ``BLEUScore`` so that it gives the COCO
  evaluation's BLEU (see below).
* :class:`CIDErD` / :func:`cider_d`: CIDEr-D (Vedantam, Zitnick and Parikh 2015) exactly as the COCO
  caption evaluation computes it (``pycocoevalcap.cider.cider_scorer.CiderScorer``; the tests prove
  the two equal to 1e-6, per caption and over the corpus). For each image ``i`` with hypothesis ``c``
  and references ``S_i``, and each n-gram order ``n`` in 1..4::

      g_k(s) = tf_k(s) * (log |I| - log max(1, df_k))          # TF-IDF, df over the refs of the corpus
      sim_n(c, s) = sum_k min(g_k(c), g_k(s)) g_k(s) / (|g(c)| |g(s)|) * exp(-(l(c) - l(s))^2 / (2 * 6^2))
      CIDEr-D(c, S_i) = 10 / 4 * sum_n 1 / |S_i| * sum_{s in S_i} sim_n(c, s)

  ``df_k`` is the number of images whose references contain n-gram ``k`` (corpus-level IDF: the score
  of a caption depends on the whole evaluated set, so compare scores only over the same images), and
  ``|I|`` is the number of images. The corpus score is the mean over images. Like the reference
  implementation, the length ``l`` of the Gaussian penalty counts the caption's bigrams, i.e. one less
  than its words (the same differences of length, except for captions of zero or one word).
* :func:`coco_scores`: BLEU-1..4, METEOR, ROUGE-L and CIDEr from ``pycocoevalcap`` itself, with its
  Java PTB tokenizer and Java METEOR, when both ``pycocoevalcap`` and ``java`` are there;
  :func:`coco_scores_unavailable` says why not otherwise.

How these relate to the official numbers: the official evaluation tokenizes with Stanford's PTB
tokenizer (``"dog's"`` -> ``dog 's``, ``cannot`` -> ``can not``; ``black-and-white`` stays one token),
where :func:`caption_words` deletes punctuation (``dogs``, ``cannot``, ``blackandwhite``). On text
that is already lower-case words without punctuation the two agree and so do the CIDEr values.
torchmetrics' corpus BLEU and ``pycocoevalcap``'s ``Bleu`` agree to about 1e-9 (``Bleu`` adds 1e-15 /
1e-9 to each precision's numerator / denominator) except for one rule: for the brevity penalty both
take the reference length closest to the hypothesis, and on a tie (a hypothesis of 10 words, references
of 9 and 11) ``pycocoevalcap`` takes the shorter one, torchmetrics the one listed first. That matters
only when the corpus is shorter than its references in total, but with five references ties are
common: on the tests' twenty COCO-style images torchmetrics' BLEU-4 is 0.4550 against 0.4619 (BLEU-1
0.6915 against 0.7021), and on a constructed set (one hypothesis of four words, references of five and
three words, five listed first) 0.7788 = exp(1 - 5/4) against 1.0. :func:`bleu_texts` lists each
image's references from the shortest to the longest, which makes torchmetrics pick as ``pycocoevalcap``
does: then the two agree to 1e-6 (torchmetrics computes in float32).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["CIDErD", "bleu_texts", "caption_words", "cider_d", "coco_scores", "coco_scores_unavailable"]

COCO_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)

NGram = tuple[str, ...]
_STATES = {  # the metric's states: the captions' utf-8 bytes, and how to cut them back into captions
    "hyp_bytes": torch.uint8,
    "hyp_lengths": torch.long,  # bytes per hypothesis
    "ref_bytes": torch.uint8,
    "ref_lengths": torch.long,  # bytes per reference
    "ref_counts": torch.long,  # references per image
}


def caption_words(text: str) -> list[str]:
    """The words of a caption: lower-cased, punctuation deleted, split on whitespace.

    Punctuation is every ASCII character of :data:`string.punctuation` and every Unicode character of a
    punctuation category (``P*``); it is deleted, not replaced by a space, so ``"dog's"`` becomes
    ``dogs`` and ``"black-and-white"`` becomes ``blackandwhite`` (as in Karpathy's COCO preprocessing).
    Applying it to its own output (joined by spaces) changes nothing.
    """
    text = text.lower().translate(_ASCII_PUNCTUATION)
    if not text.isascii():
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return text.split()


def bleu_texts(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """Captions for torchmetrics' ``BLEUScore``: normalised words joined by spaces, and each image's
    references ordered from the fewest words to the most (stable), so that its brevity penalty breaks
    ties of closest reference length towards the shorter one, as the COCO evaluation does.

    ``BLEUScore(n_gram=n)(*bleu_texts(hypotheses, references))`` equals ``pycocoevalcap``'s BLEU-n on the
    same words to 1e-6.
    """
    _check_captions(hypotheses, references)
    hyps = [" ".join(caption_words(h)) for h in hypotheses]
    refs = [
        sorted((" ".join(caption_words(r)) for r in rs), key=lambda r: len(r.split())) for rs in references
    ]
    return hyps, refs


# ---------------------------------------------------------------------------------------------- CIDEr-D


def _ngrams(words: Sequence[str], max_n: int) -> Counter[NGram]:
    """Term frequencies of the n-grams of orders 1..max_n."""
    return Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


class _TfIdf:
    """One caption as TF-IDF vectors, one per n-gram order, with their norms and the penalty's length."""

    __slots__ = ("length", "norms", "vectors")

    def __init__(self, counts: Counter[NGram], idf: dict[NGram, float], log_images: float, max_n: int):
        self.vectors: list[dict[NGram, float]] = [{} for _ in range(max_n)]
        for gram, tf in counts.items():
            self.vectors[len(gram) - 1][gram] = tf * idf.get(gram, log_images)  # unseen in refs: df = 1
        self.norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in self.vectors]
        # The reference implementation's length: the number of bigrams (not of words).
        self.length = sum(counts[g] for g in self.vectors[1]) if max_n > 1 else 0


def _similarity(hyp: _TfIdf, ref: _TfIdf, sigma: float) -> list[float]:
    """Per n-gram order: the clipped cosine of the two vectors times the Gaussian length penalty."""
    penalty = math.exp(-((hyp.length - ref.length) ** 2) / (2 * sigma**2))
    sims = []
    for h_vec, r_vec, h_norm, r_norm in zip(hyp.vectors, ref.vectors, hyp.norms, ref.norms, strict=True):
        dot = sum(min(h, r_vec[g]) * r_vec[g] for g, h in h_vec.items() if g in r_vec)  # clip to the ref
        sims.append(dot / (h_norm * r_norm) * penalty if h_norm and r_norm else 0.0)
    return sims


def _cider_d_words(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], n: int, sigma: float
) -> list[float]:
    """Per-image CIDEr-D of already-normalised words."""
    ref_counts = [[_ngrams(ref, n) for ref in refs] for refs in references]
    df: Counter[NGram] = Counter()
    for counts in ref_counts:  # an image counts once per n-gram, however many of its refs hold it
        df.update(set().union(*counts))
    log_images = math.log(len(references)) if references else 0.0
    idf = {gram: log_images - math.log(max(1.0, count)) for gram, count in df.items()}
    scores = []
    for hyp, counts in zip(hypotheses, ref_counts, strict=True):
        hyp_vec = _TfIdf(_ngrams(hyp, n), idf, log_images, n)
        per_order = [0.0] * n
        for ref in counts:
            for k, sim in enumerate(_similarity(hyp_vec, _TfIdf(ref, idf, log_images, n), sigma)):
                per_order[k] += sim
        scores.append(10.0 * sum(per_order) / n / len(counts))
    return scores


def _check_captions(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses must be a list of strings and references a list of lists of strings")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"got {len(hypotheses)} hypotheses but {len(references)} reference lists: give one list of "
            "reference captions per hypothesis"
        )
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image {i} has no list of reference captions ({refs!r}): give at least one")


def cider_d(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], *, n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D of a corpus of captions, normalised with :func:`caption_words`.

    Args:
        hypotheses: one generated caption per image.
        references: the human captions of each image (at least one per image).
        n: the longest n-gram.
        sigma: the standard deviation of the Gaussian length penalty.

    Returns:
        The corpus score (the mean over images; 0.0 for no images) and the score of each image, in order.
    """
    _check_captions(hypotheses, references)
    hyp_words = [caption_words(h) for h in hypotheses]
    ref_words = [[caption_words(r) for r in refs] for refs in references]
    scores = _cider_d_words(hyp_words, ref_words, n, sigma)
    return (sum(scores) / len(scores) if scores else 0.0), scores


# ------------------------------------------------------------------------------------------- the metric


def _encode(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts as one uint8 tensor of their utf-8 bytes, and the byte length of each."""
    blobs = [t.encode("utf-8") for t in texts]
    data = torch.from_numpy(np.frombuffer(b"".join(blobs), dtype=np.uint8).copy())
    return data, torch.tensor([len(b) for b in blobs], dtype=torch.long)


def _decode(data: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """The texts of :func:`_encode` (from states of any dtype holding the same integers)."""
    raw = data.to(torch.uint8).cpu().numpy().tobytes()
    ends = np.cumsum(lengths.to(torch.long).cpu().numpy())
    starts = ends - lengths.to(torch.long).cpu().numpy()
    return [raw[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


class CIDErD(Metric):
    """CIDEr-D of generated captions against human references, over the whole evaluated set.

    ``update(hypotheses, references)`` with one hypothesis and a list of references per image;
    :meth:`compute` returns the corpus score (float64, the mean over images), :meth:`compute_each` the
    score of every image in update order (under DDP: rank 0's images, then rank 1's...), and
    :meth:`captions` the normalised captions in that order, for a table.

    CIDEr-D is not a mean of per-batch values: its IDF comes from the references of all images. So the
    captions themselves are the state: normalised with :func:`caption_words`, as utf-8 bytes in uint8
    tensors with their lengths (list states, ``dist_reduce_fx="cat"``, which torchmetrics can
    all-gather, uneven sizes and idle ranks included), decoded in :meth:`compute`. A corpus of one
    image scores 0 (every n-gram's IDF is log 1 - log 1).

    Under DDP, ``compute``, ``compute_each`` and ``captions`` gather the states of all ranks, so every
    rank must call them together. A ``DistributedSampler`` that pads the last batch by repeating images
    makes those images count twice, in the mean and in the document frequencies.

    Args:
        n: the longest n-gram.
        sigma: the standard deviation of the Gaussian length penalty.
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hyp_bytes: list[torch.Tensor] | torch.Tensor
    hyp_lengths: list[torch.Tensor] | torch.Tensor
    ref_bytes: list[torch.Tensor] | torch.Tensor
    ref_lengths: list[torch.Tensor] | torch.Tensor
    ref_counts: list[torch.Tensor] | torch.Tensor

    def __init__(self, n: int = 4, sigma: float = 6.0, **kwargs):
        super().__init__(**kwargs)
        if n < 1 or sigma <= 0:
            raise ValueError(f"CIDErD needs n >= 1 and sigma > 0, got n={n}, sigma={sigma}")
        self.n, self.sigma = n, sigma
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._seed_states()

    def _seed_states(self) -> None:
        """Start every list with an empty tensor of its dtype. torchmetrics syncs an empty list as an empty
        *float* tensor, which gloo / NCCL cannot all-gather beside another rank's uint8 bytes (a rank that
        saw no image, e.g. of a small validation set); and a tensor state cannot hold uneven sizes."""
        for name, dtype in _STATES.items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                getattr(self, name).append(torch.zeros(0, dtype=dtype, device=self.device))

    def reset(self) -> None:
        """Forget all captions (torchmetrics' reset, then the typed empty tensors again)."""
        super().reset()
        self._seed_states()

    def update(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Add one hypothesis and its reference captions per image."""
        _check_captions(hypotheses, references)
        hyps = [" ".join(caption_words(h)) for h in hypotheses]
        refs = [" ".join(caption_words(r)) for rs in references for r in rs]
        hyp_bytes, hyp_lengths = _encode(hyps)
        ref_bytes, ref_lengths = _encode(refs)
        ref_counts = torch.tensor([len(rs) for rs in references], dtype=torch.long)
        new = {"hyp_bytes": hyp_bytes, "hyp_lengths": hyp_lengths, "ref_bytes": ref_bytes,
               "ref_lengths": ref_lengths, "ref_counts": ref_counts}  # fmt: skip
        for name, value in new.items():
            getattr(self, name).append(value.to(self.device))

    def _texts(self) -> tuple[list[str], list[list[str]]]:
        """The (local or already gathered) states decoded back into captions."""
        if dim_zero_cat(self.hyp_lengths).numel() == 0:
            return [], []
        hyps = _decode(dim_zero_cat(self.hyp_bytes), dim_zero_cat(self.hyp_lengths))
        flat = _decode(dim_zero_cat(self.ref_bytes), dim_zero_cat(self.ref_lengths))
        ends = np.cumsum(dim_zero_cat(self.ref_counts).to(torch.long).cpu().numpy()).tolist()
        refs = [flat[s:e] for s, e in zip([0, *ends[:-1]], ends, strict=True)]
        return hyps, refs

    def _scores(self) -> list[float]:
        hyps, refs = self._texts()
        return _cider_d_words(
            [h.split() for h in hyps], [[r.split() for r in rs] for rs in refs], self.n, self.sigma
        )

    def compute(self) -> torch.Tensor:
        """The corpus CIDEr-D: the mean over all images seen (0 for none), as a float64 scalar."""
        scores = self._scores()
        return torch.tensor(sum(scores) / len(scores) if scores else 0.0, dtype=torch.float64)

    def compute_each(self) -> torch.Tensor:
        """The CIDEr-D of every image, in update order (gathered over ranks), float64 ``(num_images,)``."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
            return torch.tensor(self._scores(), dtype=torch.float64)

    def captions(self) -> tuple[list[str], list[list[str]]]:
        """The normalised hypotheses and references, in the order of :meth:`compute_each`."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
            return self._texts()


# ------------------------------------------------------------------------------ official COCO evaluation


def coco_scores_unavailable() -> str | None:
    """Why :func:`coco_scores` cannot run here, or None when it can."""
    if importlib.util.find_spec("pycocoevalcap") is None:
        return "pycocoevalcap is not installed (pip install pycocoevalcap); the official COCO scores are off"
    if shutil.which("java") is None:
        return (
            "java is not on PATH: pycocoevalcap's PTB tokenizer and METEOR run in Java; install a Java "
            "runtime (e.g. apt-get install default-jre-headless) for the official COCO scores"
        )
    return None


def coco_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float] | None:
    """The official COCO caption scores, computed by ``pycocoevalcap`` itself.

    Hypotheses and references are tokenized with its Java PTB tokenizer (lower-cased, punctuation
    tokens removed), then scored with its ``Bleu(4)``, ``Meteor``, ``Rouge`` and ``Cider``. The METEOR
    Java process is closed before returning. ``pycocoevalcap`` writes a temporary file next to its
    tokenizer, so its installation folder must be writable.

    Returns:
        ``bleu1`` .. ``bleu4``, ``meteor``, ``rouge_l`` and ``cider`` (all corpus scores), or None when
        ``pycocoevalcap`` or ``java`` is missing (:func:`coco_scores_unavailable` says which).
    """
    if coco_scores_unavailable() is not None:
        return None
    _check_captions(hypotheses, references)
    if not hypotheses:
        raise ValueError("coco_scores needs at least one image")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts, res = _ptb_tokenize(PTBTokenizer(), hypotheses, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"bleu{k + 1}": float(b) for k, b in enumerate(bleu)}
    meteor = Meteor()
    try:
        scores["meteor"] = float(meteor.compute_score(gts, res)[0])
    finally:
        _close_meteor(meteor)
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    return scores


def _ptb_tokenize(tokenizer, hypotheses: Sequence[str], references: Sequence[Sequence[str]]):
    """Hypotheses and references through one run of the Java tokenizer, as ``(gts, res)`` keyed by image."""
    captions = {f"h{i}": [{"caption": h}] for i, h in enumerate(hypotheses)}
    captions.update({f"r{i}": [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    tokenized = tokenizer.tokenize(captions)
    if any(len(tokenized.get(key, ())) != len(value) for key, value in captions.items()):
        raise RuntimeError(
            "pycocoevalcap's PTB tokenizer returned a different number of captions than it got"
        )
    gts = {i: tokenized[f"r{i}"] for i in range(len(references))}
    res = {i: tokenized[f"h{i}"] for i in range(len(hypotheses))}
    return gts, res


def _close_meteor(meteor) -> None:
    """End METEOR's Java process now rather than whenever the object is collected."""
    process = meteor.meteor_p
    with meteor.lock:
        if process.stdin and not process.stdin.closed:
            process.stdin.close()
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream and not stream.closed:
                stream.close()
