"""What a training run is: model, data, optimiser, regime, scale. Loaded from configs/train/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from grf_stream.data import DataConfig
from grf_stream.model import GRFConfig

ORDER_MODES = ("fixed", "random")
SELECT_MODES = ("utterance", "live")


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up, then cosine decay; gradient clipping."""

    lr: float = 1e-3
    """Peak learning rate, reached at the end of the warm-up."""
    weight_decay: float = 1e-2
    warmup_epochs: int = 5
    """Epochs of linear warm-up from lr / warmup_epochs."""
    min_lr: float = 1e-6
    """Where the cosine ends, at the last epoch."""
    grad_clip: float = 1.0
    """Maximum gradient norm (0 = no clipping)."""
    batch_size: int = 32
    """Samples per step on each worker."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights, updated after every step; when set,
    the average is what is evaluated, chosen and saved (0 = off; 0.99 averages about 100 steps)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.batch_size <= 0 or self.warmup_epochs < 0:
            raise ValueError("optim: lr and batch_size must be positive, min_lr and warmup_epochs >= 0")
        if not 0 <= self.ema < 1:
            raise ValueError(f"optim.ema={self.ema}: give a decay in [0, 1), e.g. 0.99, or 0 for none")


@dataclass
class StreamConfig:
    """Training on live streams (grf_stream/data/streams.py): stretches of consecutive utterances of a
    video at their own times, audio and video windows of the distractor media all along, one context
    per stream, every step after the first phrase scored against the latest phrase's label."""

    batches: float = 0.0
    """Stream batches per utterance batch in an epoch; 0 = no streams."""
    max_utterances: int = 4
    """A stream has 1 to this many consecutive utterances (one count per batch)."""
    window_s: float = 1.0
    """Audio and video window, as a session's window_s."""
    lead_s: list[float] = field(default_factory=lambda: [0.0, 4.0])
    """Windows before the first utterance starts: seconds, drawn uniformly in [low, high] per batch."""
    tail_s: list[float] = field(default_factory=lambda: [0.0, 4.0])
    """Windows after the last phrase: seconds, drawn uniformly in [low, high] per batch. A live
    phrase can stay the latest for a minute; a model that never saw such tails drifts in them."""
    max_interval_s: float = 6.0
    """A longer time from one phrase to the next is shortened to this (a batch pays for its longest
    stream; lead and tail train the long waits)."""
    batch_size: int = 16
    """Streams per stream batch."""
    text_weight: float = 2.0
    """Loss weight of a phrase step; every other scored step weighs 1."""
    stability: float = 0.0
    """Weight of the mean |change of prediction| over steps without text after the first phrase."""
    gate_sparsity: float = 0.0
    """Weight of the mean gate sigmoid (6), before the floor, over the same steps: an L1 push to leave the
    context alone, whatever the recording."""

    def __post_init__(self) -> None:
        if self.batches < 0 or self.max_utterances < 1 or self.window_s <= 0 or self.max_interval_s <= 0:
            raise ValueError("train.streams: batches >= 0, max_utterances >= 1, window_s > 0 and max_interval_s > 0")
        if self.batch_size < 1:
            raise ValueError(f"train.streams.batch_size={self.batch_size} must be positive")
        for name in ("lead_s", "tail_s"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or not 0 <= low_high[0] <= low_high[1]:
                raise ValueError(f"train.streams.{name}={low_high} must be [low, high] with 0 <= low <= high")
        if self.text_weight <= 0 or self.stability < 0 or self.gate_sparsity < 0:
            raise ValueError("train.streams: text_weight > 0, stability >= 0 and gate_sparsity >= 0")


@dataclass
class RegimeConfig:
    """How long to train and what each batch asks of the model."""

    epochs: int = 100
    patience: int = 20
    """Stop after this many epochs without a better validation MAE."""
    seed: int = 0
    order: str = "fixed"
    """fixed: model.order every batch; random: a new modality order per batch (any-order serving)."""
    modality_dropout: float = 0.0
    """Per sample and modality, the chance its data is hidden (at least one modality stays)."""
    deep_supervision: float = 0.0
    """Weight of the mean L1 loss of the predictions before the last step."""
    aux_weight: float = 0.0
    """Weight of the L1 loss of model.aux_head (the released code's auxiliary loss: 0.4)."""
    window_steps: dict[str, int] = field(default_factory=dict)
    """Cut a modality into windows of this many steps, fused as separate steps in time order."""
    window_p: float = 1.0
    """Chance a batch is cut into window_steps; otherwise each modality is one step (both policies)."""
    streams: StreamConfig = field(default_factory=StreamConfig)
    """Live-stream batches mixed with the utterance batches."""
    select: str = "utterance"
    """Best checkpoint by: 'utterance' validation MAE, or 'live': the mean of it and the live replay's
    phrase and held MAE on the validation videos (needs streams' data)."""
    stop_after: int = 0
    """End this invocation after this many epochs, resumable with --resume (time-boxed jobs); 0 = off."""
    init_from: str = ""
    """Start from the weights of this checkpoint (a run's best.pt, same model config) instead of a random
    start, to fine-tune it; the optimizer, schedule and epochs start afresh. --resume takes precedence."""
    tune_only: list[str] = field(default_factory=list)
    """With init_from: train only the parameters whose names start with one of these (e.g.
    fusion.block.gfu.gate); the rest keep init_from's values. Empty = all of them."""

    def __post_init__(self) -> None:
        if self.order not in ORDER_MODES:
            raise ValueError(f"train.order={self.order!r} is not one of {ORDER_MODES}")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError(f"train.modality_dropout={self.modality_dropout} must be in [0, 1)")
        if self.epochs <= 0 or self.patience <= 0:
            raise ValueError("train.epochs and train.patience must be positive")
        if self.select not in SELECT_MODES:
            raise ValueError(f"train.select={self.select!r} is not one of {SELECT_MODES}")
        if not 0 <= self.window_p <= 1:
            raise ValueError(f"train.window_p={self.window_p} must be in [0, 1]")
        if self.tune_only and not self.init_from:
            raise ValueError("train.tune_only fine-tunes part of a trained model: set train.init_from too")
        for m, steps in self.window_steps.items():
            if steps <= 0:
                raise ValueError(f"train.window_steps.{m}={steps} must be positive")


@dataclass
class ScaleConfig:
    """Ray Train's ScalingConfig: how many workers, and whether each gets a GPU."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1


@dataclass
class TrainConfig:
    """A whole training run; checkpoints store it resolved."""

    name: str = "grf"
    """Run name: outputs go to <output_dir>/<name>/."""
    output_dir: str = "runs"
    """Checkpoints, TensorBoard events, Ray's run files. On a multi-node cluster: shared storage."""
    model: GRFConfig = field(default_factory=GRFConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RegimeConfig = field(default_factory=RegimeConfig)
    scaling: ScaleConfig = field(default_factory=ScaleConfig)

    def __post_init__(self) -> None:
        if self.train.order == "random" and not self.model.share_block:
            raise ValueError("train.order=random needs model.share_block=true: per-step blocks fix the order")
        unknown = set(self.train.window_steps) - set(self.model.modalities)
        if unknown:
            raise ValueError(f"train.window_steps names {sorted(unknown)}, not modalities of the model")
        if self.train.aux_weight and not self.model.aux_head:
            raise ValueError("train.aux_weight needs model.aux_head=true")
        live = self.train.streams.batches > 0 or self.train.select == "live"
        if live and (self.data.format != "store" or not self.data.distractors.media):
            raise ValueError("train.streams and train.select=live need a timed feature store (data.format=store) "
                             "and recordings for the windows (data.distractors.media)")
