"""Settings: one dataclass per group, the only place a default lives.

Each field's docstring (the string under it) is its `--help` text. Cross-field checks live
in `__post_init__` and raise ConfigError naming the CLI option. The CLI, the KFP components
and the Ray entry point all build these same objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kdflow.config.checks import (
    check_augment,
    check_finite,
    check_image_size,
    check_tracking_uri,
    require,
)

BUILTIN_PREFIX = "builtin:"
TASKS = ("classification", "causal-lm")
"""What --task takes: class logits per row, or next-token logits per token."""
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
"""What --kd-loss takes (causal-lm; `kdflow.distill.lm_losses` computes each)."""
GATE_TESTS = ("paired", "point")
"""How the comparative gates decide: on their intervals (paired) or point estimates."""
DEFAULT_MAX_LENGTH = {"classification": 128, "causal-lm": 512}
LM_TOP_K = 64
"""Top-k logits per token a causal-LM teacher cache keeps when --top-k is 0."""


@dataclass
class DataConfig:
    task: str = "classification"
    """What the models learn: `classification` (a class per row: columns, text or images)
    or `causal-lm` (next-token prediction on a text corpus: --text-column, or
    --prompt-column with --completion-column, where the loss counts completion tokens)."""
    data: str = "builtin:digits"
    """Training data: a Parquet or CSV file, a folder of images with one sub-folder per class
    (PNG/JPEG/WebP; local or s3://), or `builtin:digits` (scikit-learn's 8x8 digits)."""
    test_data: str | None = None
    """Test data (same columns). Without it, a stratified split of --data made from --seed."""
    label_column: str = "label"
    """Column holding the class of each row (integers or strings)."""
    input_shape: list[int] | None = None
    """Shape of one sample, e.g. 1,28,28 for images stored as flat columns. Needed by cnn."""
    test_fraction: float = 0.2
    """Share of --data held out for testing when --test-data is not given."""
    val_fraction: float = 0.1
    """Share of the training rows held out to pick the best epoch."""
    contract: str | None = None
    """Data contract YAML the data is held to (default: a lenient contract inferred on the fly)."""
    validation: str = "fail"
    """What a failed data contract does: `fail` stops the run, `warn` carries on with a warning."""
    text_column: str | None = None
    """Column of text to classify (text data: each model tokenizes it with its own tokenizer;
    the other columns but the label are ignored)."""
    text_pair_column: str | None = None
    """Second text of each row, for sentence pairs (with --text-column)."""
    max_length: int = 0
    """Tokens per text (both texts of a pair together) for text data, 128 by default;
    longer texts are truncated, and validation reports how many are. For causal-lm, the
    tokens per packed sequence (default 512): documents are packed end to end, and no
    token attends across a document's end."""
    prompt_column: str | None = None
    """Column of prompts for causal-lm instruction data (with --completion-column): the
    model reads the prompt and learns the completion only."""
    completion_column: str | None = None
    """Column of completions for causal-lm instruction data (with --prompt-column)."""
    image_column: str | None = None
    """Column of a Parquet/CSV table holding each image: a path (relative to the table's
    folder, absolute, or s3://) or the image file's bytes. Not needed for a folder of images."""
    image_size: list[int] | None = None
    """H,W every image is resized to (image data), e.g. 32,32. Default: the size all the
    images share (an error asks for this option when they differ). The input shape follows
    from it and --channels, so --input-shape is not needed for images."""
    channels: int = 0
    """Channels of image data: 1 (grayscale) or 3 (RGB); 0 takes the images' own when they
    all have the same."""

    def __post_init__(self) -> None:
        check_finite(self)
        require(bool(self.data), "data", "give a Parquet/CSV file or builtin:digits")
        require(
            self.task in TASKS, "task", f"unknown task {self.task!r}; known: {', '.join(TASKS)}"
        )
        if self.task == "causal-lm":
            self._check_corpus()
        require(bool(self.label_column), "label_column", "must not be empty")
        require(0.0 < self.test_fraction < 1.0, "test_fraction", "must be in (0, 1)")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
        require(self.validation in ("fail", "warn"), "validation", "must be `fail` or `warn`")
        require(
            self.max_length >= 0,
            "max_length",
            f"must be at least 1 token (0 or unset: {DEFAULT_MAX_LENGTH[self.task]})",
        )
        require(
            self.text_pair_column is None or bool(self.text_column),
            "text_pair_column",
            "needs --text-column (the first text of each pair)",
        )
        require(
            not self.text_column or self.text_column != self.label_column,
            "text_column",
            f"is the label column {self.label_column!r}; give the column of text",
        )
        require(self.channels in (0, 1, 3), "channels", f"must be 1 or 3, got {self.channels}")
        check_image_size(self.image_size)
        require(
            not (self.image_column and self.text_column),
            "image_column",
            "and --text-column name two kinds of data; give one",
        )
        if self.input_shape is not None:
            require(
                len(self.input_shape) > 0 and all(int(d) > 0 for d in self.input_shape),
                "input_shape",
                f"dimensions must be positive integers, got {self.input_shape}",
            )
        if self.task != "causal-lm":
            for name in ("prompt_column", "completion_column"):
                require(getattr(self, name) is None, name, "is for --task causal-lm")

    def _check_corpus(self) -> None:
        require(
            self.data != "builtin:digits",
            "data",
            "--task causal-lm needs a text corpus (Parquet, CSV or JSONL)",
        )
        require(
            self.prompt_column is None or self.completion_column is not None,
            "prompt_column",
            "needs --completion-column (the text the model learns to write)",
        )
        require(
            self.completion_column is None or self.prompt_column is not None,
            "completion_column",
            "needs --prompt-column (the text the model reads first)",
        )
        require(
            (self.text_column is None) != (self.prompt_column is None),
            "text_column",
            "--task causal-lm needs --text-column (plain text) or --prompt-column with "
            "--completion-column (instruction data), not both"
            if self.text_column
            else "--task causal-lm needs --text-column (plain text) or --prompt-column with "
            "--completion-column (instruction data)",
        )
        for name in ("text_pair_column", "image_column"):
            require(getattr(self, name) is None, name, "is not for --task causal-lm")
        if self.prompt_column is not None:
            require(
                self.prompt_column != self.completion_column,
                "completion_column",
                "is the same column as --prompt-column",
            )

    @property
    def tokens(self) -> int:
        """--max-length, or the task's default when it is 0 (128 per text, 512 per packed
        sequence of a corpus)."""
        return self.max_length or DEFAULT_MAX_LENGTH[self.task]

    @property
    def corpus_columns(self) -> list[str]:
        """The corpus's text column, or its prompt and completion columns (causal-lm)."""
        if self.prompt_column and self.completion_column:
            return [self.prompt_column, self.completion_column]
        return [self.text_column] if self.text_column else []


@dataclass
class TeacherConfig:
    teachers: list[str] = field(default_factory=lambda: ["auto"])
    """Teacher models: zoo specs (`mlp:hidden=512-512`, `cnn:channels=32-64`), MLflow URIs
    (`models:/name@alias`), or `auto`: three zoo teachers that fit the data's shape (CNNs for
    C,H,W images, 1-D CNNs for C,L sequences, MLPs for flat columns). Each member trains
    with its own seed, derived from --seed and its position."""
    teacher_epochs: int = 40
    """Epochs each teacher trains for. 0 uses fetched teachers (hf:, models:/) as they are;
    with epochs they are fine-tuned in the pipeline."""
    teacher_lr: float | None = None
    """Adam learning rate for the teachers (default: their source's: 1e-3 for zoo and
    python: models, 3e-4 for fresh transformers (1e-3 on images), 5e-5 to fine-tune a
    pretrained hf: model)."""
    batch_size: int = 64
    """Mini-batch size for teacher training."""
    vocab_size: int = 0
    """Vocabulary of the byte-level BPE tokenizer trained on the corpus for fresh causal-lm
    models (hf-config:), shared by every fresh teacher and student. 0: sized to the corpus
    (about a fifth of its distinct words, between 512 and 16,384)."""
    trust_remote_code: bool = False
    """Let an hf: teacher run the modelling code its folder or hub repository ships (off:
    only architectures built into transformers load)."""
    teacher_augment: list[str] = field(default_factory=list)
    """Train-time augmentations of the teachers' image batches (the names of --augment).
    Teachers that will label augmented views (function matching) label them better when
    they trained on such views. Default: none."""

    def __post_init__(self) -> None:
        check_finite(self)
        check_augment(self.teacher_augment, "teacher_augment")
        require(len(self.teachers) > 0, "teachers", "give at least one teacher, or `auto`")
        require(
            "auto" not in self.teachers or len(self.teachers) == 1,
            "teachers",
            "`auto` stands for the whole ensemble; give it alone, or list the teachers",
        )
        require(
            self.teacher_epochs >= 0,
            "teacher_epochs",
            "must be 0 (use fetched teachers as they are) or more",
        )
        require(self.teacher_lr is None or self.teacher_lr > 0, "teacher_lr", "must be > 0")
        require(self.batch_size >= 1, "batch_size", "must be at least 1")


@dataclass
class DistillConfig:
    student: str = "mlp:hidden=12"
    """Student model spec from the zoo; it should be several times smaller than the teachers."""
    temperature: float = 2.0
    """Softmax temperature T of the soft targets (Hinton et al. 2015); > 0."""
    alpha: float = 0.0
    """Weight of the hard-label cross-entropy; 1 - alpha weighs the T²-scaled KL term."""
    student_epochs: int = 120
    """Epochs the student (and the no-distillation baseline) train for."""
    student_lr: float | None = None
    """Adam learning rate for the student and the baseline (default: the student source's:
    3e-3 for zoo and python: models, 3e-4 for fresh transformers (1e-3 on images), 5e-5
    for hf:)."""
    student_batch_size: int = 64
    """Global mini-batch size of the student, split across the Ray Train workers."""
    grad_accum: int = 1
    """Batches whose gradients add up before each optimizer step (gradient accumulation):
    the student and its baseline update on a global batch of student_batch_size ×
    grad_accum rows while holding one batch of activations (DDP all-reduces once per
    update). The last update of an epoch may hold fewer batches."""
    workers: int = 1
    """Ray Train workers (data-parallel); each takes a GPU when CUDA is available. 0 runs the
    loop in this process (Ray Train's local mode): no Ray start and no worker processes, the
    fastest for small jobs; a failure is not retried in the step, but a rerun with the same
    run name (a KFP retry) resumes from the last epoch's checkpoint."""
    parallel: str = "ddp"
    """How the workers share the student and its baseline: `ddp` (each holds the whole
    model, gradients all-reduced) or `fsdp` (FullyShardedDataParallel: each holds 1/N of
    every weight, gradient and Adam moment, transformer blocks gathered one at a time; for
    students too large for one GPU under DDP). Needs 2 or more --workers to shard."""
    max_failures: int = 2
    """Worker failures Ray Train recovers from by resuming the last checkpoint."""
    seeds: list[int] = field(default_factory=list)
    """Distil once per seed (`--seeds 0 1 2`; the teachers are trained once, with --seed),
    and decide beats_baseline on all seeds together; the seed with the best validation
    accuracy is the one evaluated against the other gates and registered. Default: once,
    with --seed."""
    ensemble: str = "mean_probs"
    """How teachers combine: `mean_probs` (mean of softened probabilities), `weighted_probs`
    (weighted by each teacher's validation accuracy) or `mean_logits`."""
    teacher_mode: str = "offline"
    """`offline` caches each teacher's logits once and reuses them; `online` runs the teachers
    on every batch (needed when batches are augmented)."""
    augment_noise: float = 0.0
    """Gaussian noise added to every training batch's inputs, in each feature's standard
    deviations (0: off). The student and the baseline see the same noisy rows; the teachers
    label them, so it needs --teacher-mode online. A transfer set beyond the training rows,
    which helps most where data is scarce (tabular)."""
    augment: list[str] = field(default_factory=list)
    """Train-time augmentations of image batches, applied the same to the student and the
    baseline: `crop` (random resized crop, 60-100% of the area), `flip` (horizontal; wrong
    for digits and text), `rotate` (up to 15 degrees), `color` (brightness, contrast,
    saturation), `mixup` (pairs of images blended, labels too). Default: none. The teachers
    must label the very views the student sees (function matching, Beyer et al. 2022): a
    cached logit belongs to the image as it was, not to its augmented view, so --augment
    needs --teacher-mode online; give it a long schedule (--student-epochs)."""
    top_k: int = 0
    """Keep only each teacher's k largest logits (0: all): a smaller cache, an approximation.
    For causal-lm, 0 keeps 64 per token (a whole vocabulary per token is too large to
    cache), and the teachers' remaining probability is kept as one tail bucket."""
    cache_actors: int = 0
    """Ray Data actors per teacher filling its cache (offline, classification): 0 is one per
    GPU, or one per two CPUs on a CPU-only cluster; each takes a GPU where there are GPUs,
    else one CPU. Teachers fill one after the other, each on the whole pool."""
    stream_data: str = "auto"
    """How the distillation workers read the training split: `off` (each rank's rows and
    cached targets in memory, the fastest), `on` (streamed through Ray Data, chunk by
    chunk, in a seeded order: memory does not grow with the rows; classification), or
    `auto` (streamed when a rank's share would pass 2 GiB)."""
    use_gpu: str = "auto"
    """Whether the step's Ray work asks for GPUs (the Train workers, the teachers' tasks,
    the cache-fill actors): `auto` (when the Ray cluster has GPUs as the step starts),
    `on` (always: a cluster whose GPU workers scale from zero starts them, where `auto`
    would see none and train on CPUs), or `off` (CPUs only)."""
    kd_loss: str = "forward_kl"
    """Token-level divergence for causal-lm: `forward_kl` (KL(teacher ‖ student), Hinton at
    T), `reverse_kl` (KL(student ‖ teacher), mode-seeking) or `jsd` (generalised
    Jensen-Shannon with --jsd-beta, Agarwal et al. 2024)."""
    jsd_beta: float = 0.5
    """β of --kd-loss jsd, in [0, 1]: the mixture is β·teacher + (1-β)·student, and the loss
    β·KL(teacher ‖ mix) + (1-β)·KL(student ‖ mix) (TRL's convention; 0 is forward KL, 1 is
    reverse KL)."""
    storage_path: str | None = None
    """Folder or s3://bucket/prefix for checkpoints and the teacher cache, shared by runs (a
    retried run resumes, caches are reused). Default: the step's own folder, not shared."""
    ray_address: str | None = None
    """Ray dashboard of a running cluster (http://HOST:8265): submit the distillation there
    as a Ray job. Default: an in-process Ray."""
    teacher_weights: list[float] = field(default_factory=list)
    """Per-teacher ensemble weights, in --teachers order, with --ensemble weighted_probs
    (default: each teacher's validation accuracy)."""
    multi_teacher: str = "average"
    """`average` distils from the teachers' averaged distribution; `separate` sums one
    weighted KL per teacher (You et al. 2017): the same gradient over probabilities, a loss
    larger by the teachers' disagreement."""
    feature_weight: float = 0.0
    """Weight of the FitNets hint loss (Romero et al. 2015): the student matches a teacher's
    intermediate features through a learned projection. 0 turns it off; needs --teacher-mode
    online."""
    feature_layers: list[str] = field(default_factory=list)
    """TEACHER_LAYER=STUDENT_LAYER pairs for --feature-weight, by module name (net.3,
    blocks.1); `penultimate` is the input of the classifier head. Default:
    penultimate=penultimate."""
    feature_loss: str = "mse"
    """How --feature-layers pairs are matched: `mse` (FitNets: pooled to a vector per sample,
    a learned projection, mean squared error) or `cosine` (DistilBERT, Sanh et al. 2019:
    1 − cosine similarity of each token's hidden state, no pooling; token counts must match,
    widths are projected where they differ)."""
    attention_weight: float = 0.0
    """Weight of attention-map distillation (MiniLM, Wang et al. 2020) between transformer
    teacher and student, layers mapped uniformly, heads averaged when counts differ. 0 turns
    it off; needs --teacher-mode online."""
    hint_teacher: int = 0
    """Which teacher (0-based, in --teachers order) gives the features and attention maps."""
    generations: int = 1
    """Born-again rounds (Furlanello et al. 2018): generation k, distilled, teaches
    generation k+1 of the same architecture; the last one is the student. 1: off."""

    @property
    def uses_hints(self) -> bool:
        """Whether feature or attention distillation is on (both need online teachers)."""
        return self.feature_weight > 0 or self.attention_weight > 0

    def __post_init__(self) -> None:
        check_finite(self)
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        require(self.student_epochs >= 1, "student_epochs", "must be at least 1")
        require(self.student_lr is None or self.student_lr > 0, "student_lr", "must be > 0")
        require(self.student_batch_size >= 1, "student_batch_size", "must be at least 1")
        require(self.grad_accum >= 1, "grad_accum", f"must be at least 1, got {self.grad_accum}")
        require(all(s >= 0 for s in self.seeds), "seeds", "must be 0 or more")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "names a seed twice")
        require(
            self.feature_loss in ("mse", "cosine"), "feature_loss", "must be `mse` or `cosine`"
        )
        require(
            self.workers >= 0, "workers", f"must be 0 (in-process) or more, got {self.workers}"
        )
        require(
            self.workers > 0 or not self.ray_address,
            "workers",
            "0 trains in this process; a Ray cluster (--ray-address) needs 1 or more",
        )
        require(
            self.parallel in ("ddp", "fsdp"),
            "parallel",
            f"must be `ddp` or `fsdp`, got {self.parallel!r}",
        )
        require(
            self.parallel == "ddp" or self.workers > 0,
            "parallel",
            "`fsdp` shards the student across Ray Train workers; --workers 0 trains in "
            "this process",
        )
        require(self.max_failures >= 0, "max_failures", "must be >= 0")
        require(
            self.stream_data in ("auto", "on", "off"),
            "stream_data",
            f"must be `auto`, `on` or `off`, got {self.stream_data!r}",
        )
        require(
            self.use_gpu in ("auto", "on", "off"),
            "use_gpu",
            f"must be `auto`, `on` or `off`, got {self.use_gpu!r}",
        )
        require(self.cache_actors >= 0, "cache_actors", "must be 0 (one per GPU) or more")
        modes = ("mean_probs", "weighted_probs", "mean_logits")
        require(
            self.ensemble in modes,
            "ensemble",
            f"must be one of {', '.join(modes)}, got {self.ensemble!r}",
        )
        require(
            self.teacher_mode in ("offline", "online"),
            "teacher_mode",
            f"must be `offline` or `online`, got {self.teacher_mode!r}",
        )
        require(
            self.augment_noise >= 0,
            "augment_noise",
            f"must be >= 0 (0 turns it off), got {self.augment_noise}",
        )
        require(
            not self.augment_noise or self.teacher_mode == "online",
            "augment_noise",
            "adds noise to numeric columns (images take --augment), and needs --teacher-mode "
            "online: cached teacher outputs are for the rows as they are, not for noisy ones",
        )
        check_augment(self.augment, "augment")
        require(
            not self.augment or self.teacher_mode == "online",
            "augment",
            "augments image data (numeric columns take --augment-noise), and needs "
            "--teacher-mode online: cached teacher logits belong to the images as they are, not "
            "to their augmented views, which the teachers must label as the student sees them "
            "(function matching)",
        )
        require(
            self.kd_loss in KD_LOSSES,
            "kd_loss",
            f"unknown loss {self.kd_loss!r}; known: {', '.join(KD_LOSSES)}",
        )
        require(0.0 <= self.jsd_beta <= 1.0, "jsd_beta", f"must be in [0, 1], got {self.jsd_beta}")
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 keeps every logit), got {self.top_k}")
        require(
            not (self.top_k and self.ensemble == "mean_logits"),
            "top_k",
            "cannot be used with --ensemble mean_logits (it averages every logit); "
            "use mean_probs or weighted_probs",
        )
        require(
            self.multi_teacher in ("average", "separate"),
            "multi_teacher",
            f"must be `average` or `separate`, got {self.multi_teacher!r}",
        )
        require(
            not (self.multi_teacher == "separate" and self.ensemble == "mean_logits"),
            "multi_teacher",
            "`separate` sums per-teacher KLs of probabilities; use --ensemble mean_probs "
            "or weighted_probs",
        )
        if self.teacher_weights:
            require(
                self.ensemble == "weighted_probs",
                "teacher_weights",
                f"needs --ensemble weighted_probs, got {self.ensemble!r}",
            )
            require(
                all(w >= 0 for w in self.teacher_weights) and sum(self.teacher_weights) > 0,
                "teacher_weights",
                f"must be >= 0 and not all 0, got {self.teacher_weights}",
            )
        for name in ("feature_weight", "attention_weight"):
            weight = getattr(self, name)
            require(weight >= 0, name, f"must be >= 0 (0 turns it off), got {weight}")
            require(
                not weight or self.teacher_mode == "online",
                name,
                "needs --teacher-mode online: the teachers' intermediate features and "
                "attention maps are not in the logits cache",
            )
        require(
            not self.feature_layers or self.feature_weight > 0,
            "feature_layers",
            "has no effect without --feature-weight > 0",
        )
        for pair in self.feature_layers:
            teacher, sep, student = pair.partition("=")
            require(
                bool(sep and teacher.strip() and student.strip()),
                "feature_layers",
                f"write TEACHER_LAYER=STUDENT_LAYER (e.g. net.3=net.1), got {pair!r}",
            )
        # Whether the student has attention maps is its model source's to say: the hint
        # plan (`kdflow.distill.hints.make_plan`) refuses a model without them, at preflight
        # and again before training.
        require(self.hint_teacher >= 0, "hint_teacher", f"must be >= 0, got {self.hint_teacher}")
        require(self.generations >= 1, "generations", f"must be >= 1, got {self.generations}")
        if self.storage_path:
            scheme = self.storage_path.split("://", 1)[0] if "://" in self.storage_path else ""
            require(
                scheme in ("", "file", "s3"),
                "storage_path",
                f"must be a folder or s3://bucket/prefix, got {self.storage_path!r}",
            )
        if self.ray_address:
            require(
                self.ray_address.startswith(("http://", "https://")),
                "ray_address",
                f"must be the Ray dashboard's http://HOST:8265, got {self.ray_address!r}",
            )
            require(
                bool(self.storage_path),
                "storage_path",
                "--ray-address needs a --storage-path the cluster can reach "
                "(s3://bucket/prefix, or a folder every node mounts)",
            )


@dataclass
class GateConfig:
    min_retention: float = 0.97
    """Student accuracy must be at least this fraction of the teacher ensemble's."""
    min_gain_over_baseline: float = 0.0
    """Student accuracy minus the no-distillation baseline's must exceed this (causal-lm:
    the baseline's log perplexity minus the student's)."""
    min_compression: float = 5.0
    """Smallest teacher's parameter count over the student's must be at least this."""
    min_speedup: float = 1.0
    """Fastest teacher's CPU latency (batch 1, p50) over the student's must be at least this."""
    max_regression: float = 0.01
    """Student accuracy may be at most this far below the current champion's."""
    max_ece: float = 0.1
    """Calibration ceiling: the student's expected calibration error (15 bins) must be <= this."""
    max_perplexity_ratio: float = 1.5
    """causal-lm: the student's test perplexity may be at most this times the teacher
    ensemble's (the perplexity_retention gate)."""
    confidence: float = 0.95
    """Confidence of the statistical gates' intervals: beats_baseline and
    no_regression_vs_champion decide on McNemar's exact test over the same test rows, and
    say `inconclusive` (not passed) when the interval straddles the threshold."""
    gate_test: str = "paired"
    """`paired`: the comparative gates decide on their intervals at --confidence. `point`:
    on the point estimates alone (a gain of one test row passes), the evidence still shown."""
    max_class_regression: float = 0.1
    """No class's accuracy may drop by more than this vs the champion's (a class whose
    observed drop is past it is inconclusive; past it with its whole interval, failed)."""
    min_agreement: float = 0.0
    """Student-ensemble top-1 agreement on the test split must reach this, by its interval's
    lower end (0: off; the agreement is reported either way)."""
    latency_batch: int = 256
    """Rows per batch of the CPU throughput timing, beside batch 1: the per-row saving of
    the cost ledger at the batch your serving runs (classification)."""

    def __post_init__(self) -> None:
        check_finite(self)
        require(0.0 <= self.min_retention <= 1.5, "min_retention", "must be in [0, 1.5]")
        require(self.min_compression >= 0, "min_compression", "must be >= 0")
        require(self.min_speedup >= 0, "min_speedup", "must be >= 0")
        require(0.0 <= self.max_regression <= 1.0, "max_regression", "must be in [0, 1]")
        require(0.0 <= self.max_ece <= 1.0, "max_ece", f"must be in [0, 1], got {self.max_ece}")
        require(
            self.max_perplexity_ratio >= 1.0,
            "max_perplexity_ratio",
            f"must be >= 1, got {self.max_perplexity_ratio}",
        )
        require(0.5 <= self.confidence < 1.0, "confidence",
                 f"must be in [0.5, 1), got {self.confidence}")
        require(self.gate_test in GATE_TESTS, "gate_test",
                 f"must be one of {', '.join(GATE_TESTS)}, got {self.gate_test!r}")
        require(0.0 <= self.max_class_regression <= 1.0, "max_class_regression",
                 f"must be in [0, 1], got {self.max_class_regression}")
        require(0.0 <= self.min_agreement <= 1.0, "min_agreement",
                 f"must be in [0, 1], got {self.min_agreement}")
        require(1 <= self.latency_batch <= 65536, "latency_batch",
                f"must be in [1, 65536], got {self.latency_batch}")


@dataclass
class RegistryConfig:
    tracking_uri: str | None = None
    """MLflow tracking URI (default: a sqlite store under .kdflow/ in the working directory)."""
    model_name: str = "kdflow-student"
    """Registered model name in the MLflow model registry."""
    promotion: str = "auto"
    """`auto` moves the `champion` alias when every gate passed; `manual` leaves it to a person."""

    def __post_init__(self) -> None:
        check_finite(self)
        require(bool(self.model_name.strip()), "model_name", "must not be empty")
        if self.tracking_uri:
            check_tracking_uri(self.tracking_uri, "--tracking-uri")
        require(self.promotion in ("auto", "manual"), "promotion", "must be `auto` or `manual`")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    seed: int = 0
    """Seed of splits, initialisation and shuffling: the same seed gives the same run."""
    output: str = "outputs/run"
    """Folder the run writes to: summary.json, the pipeline's artifacts, logs."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "teachers": TeacherConfig,
    "distill": DistillConfig,
    "gates": GateConfig,
    "registry": RegistryConfig,
}
