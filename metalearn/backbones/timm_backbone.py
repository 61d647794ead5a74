"""Any timm model as an encoder: `method.backbone.name=timm method.backbone.model=<timm name>`, its weights from a
local file (`method.backbone.weights=`; this machine never downloads), all, none or the first blocks frozen.

The run's images arrive standardised with the dataset's own statistics (ImageStore.normalize); a pre-trained model
expects its own per-channel normalisation (its pretrained_cfg's mean and std, on [0, 1] pixels). The wrapper
undoes the first and applies the second, so the data pipeline, load_run, metalearn-predict and the export stay as
they are: the dataset's statistics are buffers of the module (set_input_stats, called by the trainer), saved with
its weights. ViTs are built with timm's dynamic_img_size, so the run's image size need not be the model's 224.
Weights are read as data only: safetensors, or torch.load(weights_only=True).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from metalearn.config import BackboneConfig
from metalearn.errors import MetalearnError
from metalearn.registry import BACKBONES


def require_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise MetalearnError("method.backbone.name=timm needs the timm package, which is not installed; install it "
                             "with pip install -e \".[timm]\" (or pip install timm)") from None
    return timm


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file, read as data (no code runs); a checkpoint that wraps
    its weights under 'state_dict' or 'model' is unwrapped."""
    if not path.is_file():
        raise MetalearnError(f"method.backbone.weights={path} does not exist; give a local .safetensors or .pth file "
                             f"of the model's weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one line naming it
        raise MetalearnError(f"method.backbone.weights={path} cannot be read as weights ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); give a .safetensors file or a torch state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetalearnError(f"method.backbone.weights={path} holds no state dict of tensors")
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, in_channels: int) -> None:
    """The file's weights into the model, less its classifier (the encoder has none); the first conv adapted to the
    run's channels as timm does (a grey run sums an RGB kernel over its channels). Any other difference is refused,
    naming the first tensor that does not fit."""
    timm = require_timm()
    cfg = model.pretrained_cfg
    heads = [h for h in ([cfg.get("classifier")] if isinstance(cfg.get("classifier"), str) else cfg.get("classifier") or [])]
    state = {k: v for k, v in state.items() if not any(k == h or k.startswith(f"{h}.") for h in heads)}
    first = f"{cfg.get('first_conv')}.weight" if cfg.get("first_conv") else None
    if first in state and state[first].shape[1] != in_channels:
        state[first] = timm.models.adapt_input_conv(in_channels, state[first])
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            raise MetalearnError(f"method.backbone.weights={path} does not fit {cfg.get('architecture')}: it has no "
                                 f"tensor {key} (shape {tuple(value.shape)}); give the weights of this model")
        if state[key].shape != value.shape:
            raise MetalearnError(f"method.backbone.weights={path} does not fit {cfg.get('architecture')}: {key} is "
                                 f"{tuple(state[key].shape)} in the file and {tuple(value.shape)} in the model")
    extra = [k for k in state if k not in own]
    if extra:
        raise MetalearnError(f"method.backbone.weights={path} does not fit {cfg.get('architecture')}: the file has "
                             f"{extra[0]}, which the model does not ({len(extra)} such tensors)")
    model.load_state_dict(state)


def cached_weights(model: nn.Module, name: str) -> Path:
    """The weights file of `name` in the Hugging Face hub's local cache, where timm downloads them; looked up on disk
    only (try_to_load_from_cache never uses the network). None there is one line."""
    import os

    from huggingface_hub import try_to_load_from_cache

    hub_id = model.pretrained_cfg.get("hf_hub_id")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename, cache_dir=os.environ.get("HF_HUB_CACHE")) if hub_id else None
        if isinstance(path, str):
            return Path(path)
    raise MetalearnError(f"method.backbone.weights=cache: timm has no cached weights for {name} on this machine "
                         f"({hub_id or 'no hub id'}); download them where there is a network (timm.create_model("
                         f"'{name}', pretrained=True)) or give a weights file")


class TimmBackbone(nn.Module):
    """A timm model without its classifier: images [N, C, H, W] standardised by the dataset -> codes [N, D]."""

    def __init__(self, name: str, in_channels: int, weights: str | None, freeze: str):
        super().__init__()
        timm = require_timm()
        if name not in timm.list_models():
            raise MetalearnError(f"method.backbone.model={name} is not a timm model; list them with python -c "
                                 f"\"import timm; print(timm.list_models('*vit*'))\"")
        kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_channels}
        try:
            self.model = timm.create_model(name, pretrained=False, dynamic_img_size=True, dynamic_img_pad=True, **kwargs)
        except TypeError:  # a CNN: any input size already, and no such argument
            self.model = timm.create_model(name, pretrained=False, **kwargs)
        cfg = self.model.pretrained_cfg
        mean, std = torch.tensor(cfg.get("mean", (0.5,) * 3)), torch.tensor(cfg.get("std", (0.5,) * 3))
        if in_channels != len(mean):  # a grey run: one channel, the model's average normalisation
            mean, std = mean.mean().expand(in_channels), std.mean().expand(in_channels)
        self.register_buffer("model_mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("model_std", std.view(1, -1, 1, 1).clone())
        self.register_buffer("data_mean", torch.zeros(()))
        self.register_buffer("data_std", torch.ones(()))
        self.weights = weights
        if weights == "cache":  # timm's own offline cache (the Hugging Face hub's folder), never the network
            path = cached_weights(self.model, name)
            load_into(self.model, read_weights(path), path, in_channels)
        elif weights:
            load_into(self.model, read_weights(Path(weights).expanduser()), Path(weights), in_channels)
        self.frozen = self._freeze(freeze)

    def _freeze(self, freeze: str) -> list[nn.Module]:
        """freeze=all | none | N (the stem and the first N blocks, timm's coarse groups): the modules kept frozen,
        whose batch norms also keep their statistics (train() leaves them in eval mode)."""
        timm = require_timm()
        if freeze == "none":
            return []
        if freeze == "all":
            chosen = set(n for n, _ in self.model.named_parameters())
        else:
            try:
                blocks = int(freeze)
            except ValueError:
                raise MetalearnError(f"method.backbone.freeze={freeze}: give all, none or a number of blocks") from None
            groups = timm.models.group_parameters(self.model, self.model.group_matcher(coarse=True))
            if not 0 <= blocks < len(groups) - 1:
                raise MetalearnError(f"method.backbone.freeze={blocks}: this model has {len(groups) - 1} blocks after "
                                     f"its stem; give 0 to {len(groups) - 2}, all or none")
            chosen = {n for g, names in groups.items() if int(g) <= blocks for n in names}
        for n, p in self.model.named_parameters():
            p.requires_grad_(n not in chosen)
        names = {n.rsplit(".", 1)[0] for n in chosen}
        return [m for n, m in self.model.named_modules() if n in names or freeze == "all"]  # all: the model too

    def train(self, mode: bool = True) -> TimmBackbone:
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def pretrained_input(self) -> dict:
        """The model's own input as its pretrained config gives it: size, per-channel mean and std, interpolation."""
        cfg = self.model.pretrained_cfg
        size = cfg.get("input_size")
        return {"model": cfg.get("architecture"), "image_size": int(size[-1]) if size else None,
                "mean": [float(v) for v in self.model_mean.flatten()], "std": [float(v) for v in self.model_std.flatten()],
                "interpolation": cfg.get("interpolation"), "weights": self.weights}

    def set_input_stats(self, mean: float, std: float) -> None:
        """The dataset's standardisation, which forward undoes before the model's own."""
        self.data_mean.fill_(mean)
        self.data_std.fill_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.data_std + self.data_mean  # back to [0, 1]
        return self.model((pixels - self.model_mean) / self.model_std)


@BACKBONES.register("timm")
def _timm(cfg: BackboneConfig, in_channels: int, channels_last: bool, bn_running_stats: bool) -> nn.Module:
    if not cfg.model:
        raise MetalearnError("method.backbone.name=timm needs method.backbone.model=<a timm model name>, e.g. "
                             "resnet18 or vit_small_patch16_224")
    return TimmBackbone(cfg.model, in_channels, cfg.weights, str(cfg.freeze))
