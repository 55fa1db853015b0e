"""The configuration: plain dataclasses, converted from dicts with every problem reported at once."""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
TASKS = ("auto", "classification", "regression", "retrieval")
BAD_ITEM_POLICIES = ("error", "skip", "missing")


@dataclass
class Component:
    """A registry entry by name plus its constructor parameters (``{name: gru, hidden: 128}``)."""

    name: str
    params: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, **self.params}


@dataclass
class SplitConfig:
    column: Optional[str] = "split"  # values train/val/test; when absent a stratified split is made
    val_size: float = 0.15
    test_size: float = 0.15
    seed: int = 0


# personal data the text anonymiser finds (Presidio's entity names, plus STREET_ADDRESS)
PII_ENTITIES = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "STREET_ADDRESS", "LOCATION", "DATE_TIME", "US_SSN",
                "CREDIT_CARD", "IBAN_CODE", "US_PASSPORT", "UK_NHS", "MEDICAL_LICENSE", "URL", "IP_ADDRESS",
                "US_DRIVER_LICENSE", "US_BANK_NUMBER", "US_ITIN", "NRP", "ORGANIZATION")
# the default: the list of personal data; organisations, nationalities and the US driving
# licence / bank number patterns (which match many ordinary numbers) only when asked for
DEFAULT_PII = PII_ENTITIES[:14]


@dataclass
class AnonymizeConfig:
    """Personal data out of the inputs before anything sees them (docs/privacy.md): in text replaced
    by typed placeholders (<PERSON>), in images faces blurred or boxed. Applied the same way at
    training, evaluation, prediction and serving time (the model directory records it)."""

    text_columns: Optional[List[str]] = None  # null: every text modality's columns
    # presidio: Microsoft Presidio with spaCy's en_core_web_md (crossfuse[privacy]); regex: patterns
    # only, which find no bare person names; auto: presidio when installed, else regex with a warning
    detector: Literal["auto", "presidio", "regex"] = "auto"
    entities: Optional[List[str]] = None  # null: DEFAULT_PII
    score_threshold: float = 0.35  # presidio's findings below this confidence are left
    image_columns: Optional[List[str]] = None  # null: every image modality's columns
    faces: Optional[Literal["blur", "box"]] = "blur"  # null: images untouched


@dataclass
class DataConfig:
    manifest: Optional[str] = None
    target: Optional[str] = "label"
    task: Literal["auto", "classification", "regression", "retrieval"] = "auto"
    id_column: Optional[str] = None
    on_bad_item: Literal["error", "skip", "missing"] = "error"
    check_files: bool = True  # open every file during validation (catches corrupt images early)
    # file paths that leave the manifest's folder (absolute, or through '..') are bad items unless
    # this is true: a manifest from elsewhere cannot make crossfuse read arbitrary files
    allow_outside_paths: bool = False
    # columns never used as inputs when the modalities are inferred (a copy of the label, a fold id)
    exclude: List[str] = field(default_factory=list)
    split: SplitConfig = field(default_factory=SplitConfig)
    anonymize: Optional[AnonymizeConfig] = None  # null: inputs used as they are


@dataclass
class ModalityConfig:
    kind: str  # a registered modality kind (crossfuse.data.processors.PROCESSORS): image, text, audio, tabular
    columns: List[str]
    encoder: Optional[Component] = None  # none: the kind's default (small_cnn, gru, audio_cnn, mlp)
    processor: Dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadConfig:
    hidden: List[int] = field(default_factory=lambda: [128])
    dropout: float = 0.1


@dataclass
class EarlyStoppingConfig:
    metric: Optional[str] = None  # None: f1_macro for classification, rmse for regression
    patience: int = 5
    min_delta: float = 0.0
    # never stop before this many epochs; null: half the epoch budget (validation scores swing most
    # while the learning rate is high, and runs stopped there lost up to 0.25 accuracy)
    min_epochs: Optional[int] = None


@dataclass
class BalanceConfig:
    """Balanced multimodal training: in joint training the quickest modality dominates the gradient
    and the others' encoders stay undertrained (Wang et al., CVPR 2020; Peng et al., CVPR 2022)."""

    # weight of each modality's auxiliary loss: a linear head on that modality's features alone,
    # trained on the items where it is present, added to the fused loss; 0: no auxiliary heads
    aux_weight: float = 0.0
    # on-the-fly gradient modulation with Gaussian enhancement (OGM-GE): the gradients of a modality
    # whose auxiliary head is ahead of the others' are scaled by 1 - tanh(alpha * (ratio - 1));
    # null: off. Needs the auxiliary heads (aux_weight > 0)
    ogm_alpha: Optional[float] = None
    ogm_noise: bool = True  # OGM-GE's Gaussian noise on the modulated encoders' gradients
    # gradient blending (Wang et al., CVPR 2020, online): the fused loss and each modality's
    # auxiliary loss weighted by generalisation gained per overfitting squared, w ~ dG / dO^2,
    # re-estimated from train and validation losses every ``blend_every`` epochs (replaces
    # aux_weight's fixed weight; needs a validation split)
    blend: bool = False
    blend_every: int = 2
    # learning-rate factor per modality's encoder, e.g. {image: 2.0}; others 1
    modality_lr: Dict[str, float] = field(default_factory=dict)


@dataclass
class PrivacyConfig:
    """Differentially private training: DP-SGD through Opacus (crossfuse[privacy]); see docs/privacy.md.
    Give ``target_epsilon`` (the noise is chosen so the whole epoch budget spends it) or
    ``noise_multiplier`` (epsilon is what the epochs run spend)."""

    target_epsilon: Optional[float] = None
    noise_multiplier: Optional[float] = None
    delta: Optional[float] = None  # null: 1/N for N training items; larger than 1/N is refused
    max_grad_norm: float = 1.0  # each item's gradient is clipped to this L2 norm
    accountant: Literal["rdp", "prv"] = "rdp"


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    encoder_lr: Optional[float] = None  # learning rate of trainable encoder (backbone) weights; none: lr
    weight_decay: float = 0.01
    momentum: float = 0.9  # SGD only
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 10  # step scheduler: epochs between decays
    gamma: float = 0.1
    grad_clip: Optional[float] = 1.0
    label_smoothing: float = 0.0  # classification: share of each target spread over all classes
    # an exponential moving average of the weights (decay per step, e.g. 0.999), used for
    # validation, early stopping and the saved model; null: the weights as trained
    ema: Optional[float] = None
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, else 32-true
    seed: int = 0
    class_weights: Literal["none", "balanced"] = "none"
    sampler: Literal["random", "balanced"] = "random"
    # per item, drop each present modality with this probability (or {modality: p}) while training,
    # so the model learns to predict from whatever subset an item arrives with
    modality_dropout: Union[float, Dict[str, float]] = 0.0
    num_workers: int = 0
    threads: Optional[int] = None  # torch and crossfuse's pools; none: OMP_NUM_THREADS, else the defaults
    accelerator: str = "auto"
    devices: Union[int, str] = 1
    strategy: str = "auto"
    num_nodes: Optional[int] = None  # machines; null: from torchrun's / SLURM's environment, else 1
    progress: bool = True
    # retrieval: after early stopping chose the epoch count on the validation split, train a fresh
    # model on train + val for that many epochs (small pair sets gain from the extra pairs)
    refit: bool = False
    # fusion models: fit logistic/ridge regression on each modality's features and on all of them
    # (frozen encoders' outputs, else the raw inputs) and report it beside the model
    baseline: bool = True
    # run tracking: every epoch's record (losses, validation metrics, samples/s, peak memory) and the
    # run's config go to OUTPUT_DIR/logs/<logger>/ through Lightning Fabric's loggers
    logger: Literal["none", "csv", "tensorboard", "mlflow"] = "none"
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    privacy: Optional[PrivacyConfig] = None  # DP-SGD (differential privacy); null: ordinary training


@dataclass
class ImagineConfig:
    """Imagining an absent modality's features from the present ones (fusion models; see
    crossfuse.models.imagine). Trains with the model; works best beside train.modality_dropout,
    which decides what is hidden, so the fusion learns on imagined features."""

    kind: Literal["mlp", "cvae", "gan"] = "mlp"
    hidden: List[int] = field(default_factory=lambda: [256])  # each generator's hidden widths
    dropout: float = 0.1
    weight: float = 1.0  # weight of the reconstruction loss beside the task's
    # cvae and gan: draw the latent / noise at prediction instead of using its mean (0)
    sample: bool = False
    latent: int = 16  # cvae: latent size; gan: noise size
    kl_weight: float = 0.01  # cvae: weight of the KL term
    adv_weight: float = 0.1  # gan: weight of the generator's adversarial loss
    # true: the generators' losses also train the encoders they read (MMIN's joint training); off by
    # default, as from-scratch encoders pulled that way lost the task (docs/missing.md)
    train_encoders: bool = False


@dataclass
class MissingConfig:
    """What a model does with an absent modality: left out through the presence mask (always
    possible), or, with ``imagine``, imagined from the modalities that are there."""

    imagine: Optional[ImagineConfig] = None  # {} turns it on with the defaults


@dataclass
class TrustConfig:
    """Knowing when a present modality should not be believed, and calibrated probabilities
    (fusion models; fitted after training, saved with the model; see crossfuse.models.trust)."""

    ood: bool = True  # fit each modality's feature statistics (train) and reference scores (val)
    # at prediction, remove a present modality whose trust (a p-value) is below alpha through the
    # presence mask; about alpha of in-distribution items lose a modality this way. auto: on when
    # the model trained with modality dropout (so it has learnt to do without a modality), else off
    gate: Union[bool, Literal["auto"]] = "auto"
    alpha: float = 0.01
    max_removed: int = 1  # the gate removes at most this many modalities per item, least trusted first
    temperature: bool = True  # classification: fit temperature scaling on the validation split


@dataclass
class CacheConfig:
    enabled: bool = True  # frozen encoders' outputs are computed once and read from disk after
    dir: Optional[str] = None  # default: $CROSSFUSE_CACHE or ~/.cache/crossfuse/embeddings
    batch_size: int = 64  # extraction batch size
    # store the vectors AES-256-GCM encrypted (crossfuse[privacy]; key from $CROSSFUSE_KEY), in
    # namespaces of their own; decrypted in memory when read
    encrypt: bool = False


@dataclass
class BridgeConfig:
    """A zero-shot semantic bridge (ConSE, Norouzi et al. 2014): an image encoder's pretrained
    classifier names what it sees; the text encoder embeds those class names; the probability-
    weighted mean of the names' embeddings places the image in the text encoder's own space."""

    weight: float = 0.5  # share of the similarity that comes from the bridge (the rest: the learned space)
    top: int = 10  # classes kept per image (0: all)
    temperature: float = 1.0  # on the classifier's logits
    template: str = "A {}."  # how a class name is written before the text encoder embeds it
    source: Optional[str] = None  # the image modality; none: the one whose encoder has a classifier
    target: Optional[str] = None  # the text modality; none: the first text modality


@dataclass
class RetrievalConfig:
    """Contrastive training of a shared embedding space (``data.task: retrieval``)."""

    embed_dim: int = 256  # size of the shared space
    hidden: List[int] = field(default_factory=list)  # projection MLP hidden widths; [] = linear
    dropout: float = 0.5  # on the encoder features before projecting (small pair sets overfit)
    loss: Literal["infonce", "siglip"] = "infonce"
    temperature: float = 0.07  # initial; logits = similarity / temperature
    learn_temperature: bool = True
    # rows with the same value here are one item (an image and its 5 captions); none: every row its own
    group_column: Optional[str] = None
    # the modality pair whose mean Recall@1/5/10 (both ways) early stopping watches; none: the first two
    monitor_pair: Optional[List[str]] = None
    bridge: Optional[BridgeConfig] = None  # {} turns it on with the defaults
    # data parallelism: each rank's contrastive loss sees every rank's rows as negatives (gathered
    # with their gradients, as OpenCLIP does); false: each rank's own batch only
    global_negatives: bool = True


@dataclass
class TuneConfig:
    """Hyperparameter search (``crossfuse tune``, extra ``crossfuse[tune]``: Optuna).

    ``space``: config key -> {log_uniform: [lo, hi]} | {uniform: [lo, hi]} | {int: [lo, hi]} |
    {choice: [a, b, ...]}; empty: a default space (learning rate, weight decay, head dropout,
    modality dropout, fusion method). ``trials`` is the study's total: workers stop when the study
    holds that many finished trials, and running the command again continues up to it.
    """

    space: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    trials: int = 20
    timeout: Optional[float] = None  # seconds per worker; null: no limit
    seed: int = 0  # TPE sampler's seed (each worker adds its number)
    pruner: Literal["median", "hyperband", "none"] = "median"
    storage: Optional[str] = None  # null: a journal file in <output_dir>/tune; or a PostgreSQL/MySQL URL
    study: Optional[str] = None  # null: the output_dir's name
    epochs: Optional[int] = None  # train.epochs of each trial; null: the config's
    ensemble: int = 0  # >= 2: also refit the best K trials and save their greedy ensemble (tune/ensemble)
    # >= 2: each trial is scored by K-fold cross-validation over the train + val rows (the test rows
    # as the config splits them, never used), its objective the mean of the folds' best validation
    # scores: a choice that does not hang on one small validation split; 0: that split
    cv: int = 0


@dataclass
class Config:
    modalities: Dict[str, ModalityConfig] = field(default_factory=dict)  # empty: inferred from the manifest
    data: DataConfig = field(default_factory=DataConfig)
    fusion: Component = field(default_factory=lambda: Component("concat"))
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    missing: MissingConfig = field(default_factory=MissingConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    output_dir: str = "runs/latest"
    preset: Optional[str] = None  # fast | medium | best: values for the keys the config leaves out (config/presets.py)

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)


def to_dict(obj: Any) -> Any:
    if isinstance(obj, Component):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type, data: Any, path: str, problems: List[str]) -> Any:
    """Build ``cls`` from ``data``; append every problem found to ``problems`` (path-qualified)."""
    return _convert(cls, data, path, problems)


def _convert(tp: Any, value: Any, path: str, problems: List[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if tp is Component:
        return _component(value, path, problems)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, path, problems)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and value is not None:  # Optional[X]: X's own, more precise, messages
            return _convert(options[0], value, path, problems)
        for option in options:  # first option that converts cleanly wins
            trial: List[str] = []
            out = _convert(option, value, path, trial)
            if not trial:
                return out
        problems.append(f"'{path}' must be {_describe(tp)}. Got {value!r}.")
        return None
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"'{path}' must be one of {', '.join(map(str, args))}. Got {value!r}.{hint}")
        return value
    if origin in (list, List):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single column name is a list of one
        if not isinstance(value, (list, tuple)):
            problems.append(f"'{path}' must be a list. Got {value!r}.")
            return []
        return [_convert(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            problems.append(f"'{path}' must be a mapping. Got {value!r}.")
            return {}
        return {k: _convert(args[1], v, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"'{path}' must be true or false. Got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"'{path}' must be an integer. Got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; it is the number it looks like
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"'{path}' must be a number. Got {value!r}.")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"'{path}' must be a string. Got {value!r}.")
        return value
    return value


def _dataclass(cls: type, value: Any, path: str, problems: List[str]) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.append(f"'{path or 'config'}' must be a mapping. Got {value!r}.")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, item in value.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"Unknown key '{sub}'.{hint} Known: {', '.join(fields)}")
            continue
        kwargs[key] = _convert(hints[key], item, sub, problems)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            problems.append(f"'{path + '.' if path else ''}{name}' is required.")
            kwargs[name] = None
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        problems.append(f"'{path}': {exc}")
        return None


def _component(value: Any, path: str, problems: List[str]) -> Optional[Component]:
    if isinstance(value, str):
        return Component(value)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        problems.append(f"'{path}' must be a name or a mapping with a 'name' key. Got {value!r}.")
        return None
    params = {k: v for k, v in value.items() if k != "name"}
    return Component(value["name"], params)


def _describe(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    names = []
    for a in args:
        if typing.get_origin(a) is Literal:
            names += [repr(v) for v in typing.get_args(a)]
        else:
            names.append({bool: "true or false"}.get(a, getattr(a, "__name__", str(a))))
    return " or ".join(names) + (" or null" if type(None) in typing.get_args(tp) else "")
