"""U-Net segmentation models with timm encoders (segmentation-models-pytorch).

The baseline of Rangel DaCosta et al. (npj Comput. Mater. 10, 2024) is a U-Net with a ResNet-18 encoder
(~14 M parameters), one input channel (a standardised HRTEM intensity image) and two output classes
(0 = background/substrate, 1 = particle). Any timm encoder can be used through smp's ``tu-<name>``
prefix (``tu-resnet18``, ``tu-resnet10t``, ``tu-efficientnet_b0`` ...); smp's own encoder names work too.
Weights are never downloaded here (``encoder_weights=None`` by default): the models are trained from
scratch on simulated data, and pretrained weights come from :func:`models.hub.from_pretrained`.

The architecture is fully described by a :class:`ModelConfig` (stored as ``config.json`` next to the
weights), so a saved model can be rebuilt without the training code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hrtem_dataset.errors import InputError

DEFAULT_ENCODER = "tu-resnet18"
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
CLASS_NAMES = ("background", "particle")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and to feed it correctly.

    ``pixel_size`` (Å) is the pixel size of the images the model was trained on; inference rescales
    micrographs to it. ``normalization`` is the input preprocessing (per-image standardisation: zero mean,
    unit standard deviation over the whole image).
    """

    encoder: str = DEFAULT_ENCODER
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS
    in_channels: int = 1
    classes: int = 2
    class_names: tuple[str, ...] = CLASS_NAMES
    pixel_size: float | None = None
    normalization: str = "per-image-standardization"
    threshold: float = 0.5  # particle where P(particle) > threshold: the operating point (0.5 = arg-max)
    min_particle_area: float = 0.0  # Å²: predicted particles smaller than this are dropped (0 keeps all)
    architecture: str = "Unet"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "decoder_channels" in kw:
            kw["decoder_channels"] = tuple(int(c) for c in kw["decoder_channels"])
        if "class_names" in kw:
            kw["class_names"] = tuple(kw["class_names"])
        return cls(**kw)


def check_encoder(encoder: str) -> str:
    """Return ``encoder`` if smp can build it, else raise :class:`InputError` naming it."""
    import segmentation_models_pytorch as smp

    if not isinstance(encoder, str) or not encoder:
        raise InputError(f"encoder: expected a name such as 'tu-resnet18', got {encoder!r}")
    if encoder.startswith("tu-"):
        import timm

        name = encoder[3:]
        if not timm.is_model(name):
            raise InputError(f"encoder {encoder!r}: unknown timm model {name!r} (see timm.list_models())")
        return encoder
    if encoder not in smp.encoders.get_encoder_names():
        raise InputError(f"encoder {encoder!r}: unknown encoder (use 'tu-<timm model>', e.g. 'tu-resnet18')")
    return encoder


def build_model(encoder: str = DEFAULT_ENCODER, *, encoder_depth: int = 5,
                decoder_channels: tuple[int, ...] | list[int] | None = None, in_channels: int = 1,
                classes: int = 2, pixel_size: float | None = None, encoder_weights: str | None = None,
                config: ModelConfig | None = None):
    """Build a U-Net (``smp.Unet``) with a timm encoder; returns a ``torch.nn.Module``.

    The module outputs logits of shape (B, classes, H, W) for input (B, in_channels, H, W); H and W must
    be multiples of ``2**encoder_depth`` (the inference helpers pad for you). The model carries its
    :class:`ModelConfig` as ``model.hrtem_config``. ``decoder_channels`` must have ``encoder_depth``
    entries (default: the last ``encoder_depth`` of (256, 128, 64, 32, 16)). Unknown encoders raise
    :class:`InputError`.
    """
    import segmentation_models_pytorch as smp

    if config is None:
        if decoder_channels is None:
            decoder_channels = DEFAULT_DECODER_CHANNELS[:encoder_depth]
        config = ModelConfig(encoder=encoder, encoder_depth=int(encoder_depth),
                             decoder_channels=tuple(int(c) for c in decoder_channels),
                             in_channels=int(in_channels), classes=int(classes), pixel_size=pixel_size)
    check_encoder(config.encoder)
    if not 1 <= config.encoder_depth <= 5:
        raise InputError(f"encoder_depth: must be in 1..5, got {config.encoder_depth}")
    if len(config.decoder_channels) != config.encoder_depth:
        raise InputError(f"decoder_channels: need {config.encoder_depth} values (one per encoder stage), "
                         f"got {list(config.decoder_channels)}")
    if config.classes < 2:
        raise InputError(f"classes: need >= 2 (background + particle), got {config.classes}")
    try:
        model = smp.Unet(encoder_name=config.encoder, encoder_depth=config.encoder_depth,
                         encoder_weights=encoder_weights, decoder_channels=list(config.decoder_channels),
                         in_channels=config.in_channels, classes=config.classes)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise InputError(f"encoder {config.encoder!r}: cannot build U-Net: {exc}") from None
    model.hrtem_config = config
    return model


def size_multiple(model_or_config) -> int:
    """Spatial size the model's input must be divisible by (2**encoder_depth)."""
    cfg = getattr(model_or_config, "hrtem_config", model_or_config)
    return 2 ** int(cfg.encoder_depth)


def encoder_parameters(model):
    return list(model.encoder.parameters())


def decoder_parameters(model):
    """Decoder and segmentation head (everything after the encoder)."""
    params = list(model.decoder.parameters()) + list(model.segmentation_head.parameters())
    if getattr(model, "classification_head", None) is not None:
        params += list(model.classification_head.parameters())
    return params


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))
