"""The peers: imagen-pytorch and diffusers' UNet2DConditionModel in the DeepFloyd IF layout.

They are imported only here (the ``bench`` extra), never by pixcade. Workarounds needed to
import them on an offline machine with torch 2.13.0 (CPU build) and no torchvision:

* imagen-pytorch's ``__init__`` pulls in its trainer (accelerate, pytorch-warmup, ...), so
  the package is registered as an empty namespace and only ``imagen_pytorch.imagen_pytorch``
  (the model and its sampler) is loaded.
* That module imports torchvision and kornia at the top but uses them only to make PIL
  images and for random crops, neither of which the benchmark touches: empty stand-ins are
  put in ``sys.modules`` for the import and removed afterwards.
* Its ``Unet`` signature calls ``get_encoded_dim('google/t5-v1_1-base')`` when the module
  is imported, which asks the Hugging Face hub for the T5 config. The cache that function
  reads is pre-filled with that model's published width (d_model = 768), so nothing is
  fetched; every U-Net here is built with an explicit ``text_embed_dim`` anyway.
* diffusers imports fine with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Callable

import torch
import torch.nn.functional as F

from common import autocast, make_batch
from specs import Suite, UNetSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

T5_BASE_D_MODEL = 768  # google/t5-v1_1-base's published d_model
_MINILM = "minilm-local"


def _heads(spec: UNetSpec) -> int:
    """imagen-pytorch uses one head count for every level: the mean the spec implies."""
    levels = sorted(set(spec.attn_levels) | set(spec.cross_attn_levels)) or [len(spec.channel_mult) - 1]
    per_level = [spec.level_channels[i] // spec.head_dim for i in levels]
    return max(2, round(sum(per_level) / len(per_level)))


# ---------------------------------------------------------------------------------------
# imagen-pytorch
# ---------------------------------------------------------------------------------------

def import_imagen():
    if "imagen_pytorch.imagen_pytorch" in sys.modules:
        return sys.modules["imagen_pytorch.imagen_pytorch"]
    spec = importlib.util.find_spec("imagen_pytorch")
    if spec is None:
        raise ImportError("imagen-pytorch is not installed (pip install -e '.[bench]', see benchmarks/README.md)")
    import transformers  # noqa: F401  (before the stand-ins: it probes for torchvision itself)

    pkg = types.ModuleType("imagen_pytorch")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["imagen_pytorch"] = pkg
    stand_ins = ["torchvision", "torchvision.transforms", "kornia", "kornia.augmentation"]
    added = [n for n in stand_ins if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    if "torchvision" in added:
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    if "kornia" in added:
        sys.modules["kornia"].augmentation = sys.modules["kornia.augmentation"]
    try:
        import imagen_pytorch.t5 as t5
        from transformers import T5Config

        t5.T5_CONFIGS.setdefault(t5.DEFAULT_T5_NAME, {"config": T5Config(d_model=T5_BASE_D_MODEL)})
        import imagen_pytorch.imagen_pytorch as ip
    finally:
        for n in added:
            sys.modules.pop(n, None)
    return ip


class Imagen:
    NAME = "imagen-pytorch"
    SAMPLER = "ancestral DDPM"

    @staticmethod
    def default_steps(which: str) -> int:
        return 1000  # Imagen(timesteps=1000), for every U-Net of the cascade

    @staticmethod
    def unet(spec: UNetSpec, suite: Suite):
        ip = import_imagen()
        levels = range(len(spec.channel_mult))
        bottom = len(spec.channel_mult) - 1
        return ip.Unet(
            dim=spec.channels,
            dim_mults=spec.channel_mult,
            # Each level has one conditioned ResNet block plus num_resnet_blocks plain ones.
            num_resnet_blocks=tuple(n - 1 for n in spec.num_res_blocks),
            layer_attns=tuple(i in spec.attn_levels for i in levels),
            layer_cross_attns=tuple(i in spec.cross_attn_levels for i in levels),
            attend_at_middle=bottom in spec.attn_levels,
            attn_dim_head=spec.head_dim,
            attn_heads=_heads(spec),
            text_embed_dim=suite.text_dim,
            max_text_len=suite.text_len,
            lowres_cond=spec.is_sr,
            # Downsample after each level (but the last), like the spec's level resolutions.
            memory_efficient=False,
        )

    @classmethod
    def imagen(cls, suite: Suite, which: str, timesteps: int | None = None):
        ip = import_imagen()
        t = timesteps or 1000
        if which == "base":
            return ip.Imagen(unets=(cls.unet(suite.base, suite),), image_sizes=(suite.base.resolution,),
                             text_embed_dim=suite.text_dim, timesteps=t)
        base = ip.NullUnet() if which == "sr" else cls.unet(suite.base, suite)
        return ip.Imagen(unets=(base, cls.unet(suite.sr, suite)),
                         image_sizes=(suite.sr.lowres_resolution, suite.sr.resolution),
                         text_embed_dim=suite.text_dim, timesteps=t)

    @classmethod
    def train_step(cls, suite: Suite, which: str, device: str, opts) -> tuple[Callable[[], None], int]:
        spec = suite.sr if which == "sr" else suite.base
        batch = suite.sr_train_batch if which == "sr" else suite.train_batch
        model = cls.imagen(suite, which).to(device)
        number = 2 if which == "sr" else 1
        unet = model.unets[number - 1]
        n_params = sum(p.numel() for p in unet.parameters())
        # ImagenTrainer's optimiser: Adam(lr=1e-4, eps=1e-8, betas=(0.9, 0.99)).
        opt = torch.optim.Adam(unet.parameters(), lr=1e-4, eps=1e-8, betas=(0.9, 0.99))
        data = make_batch(spec, batch, suite, device)
        images = (data["images"] + 1) / 2  # it normalises [0, 1] inputs itself; makes its own low-res

        def step() -> None:
            with autocast(device, "bf16" in opts):
                loss = model(images, text_embeds=data["text_emb"], text_masks=data["text_mask"], unet_number=number)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step, n_params

    @classmethod
    def stage_sampler(cls, suite: Suite, which: str, device: str, steps: int, opts, guidance: float):
        spec = suite.sr if which == "sr" else suite.base
        model = cls.imagen(suite, "cascade", timesteps=steps).to(device).eval()
        data = make_batch(spec, suite.sample_batch, suite, device)
        kw = dict(text_embeds=data["text_emb"], text_masks=data["text_mask"], cond_scale=guidance,
                  use_tqdm=False, device=torch.device(device))
        if which == "sr":
            kw.update(start_at_unet_number=2, start_image_or_video=(data["lowres"] + 1) / 2)
        else:
            kw.update(stop_at_unet_number=1)
        return lambda: model.sample(**kw)

    @staticmethod
    def text_encoder(device: str):
        """imagen-pytorch's encode path (t5_encode_text) run on the same MiniLM model."""
        import_imagen()
        import imagen_pytorch.t5 as t5
        from transformers import AutoModel, AutoTokenizer

        from pixcade.text.encoders import minilm_directory

        d = str(minilm_directory())
        tokenizer = AutoTokenizer.from_pretrained(d)
        if not hasattr(tokenizer, "batch_encode_plus"):
            # transformers 5 dropped batch_encode_plus, which t5_tokenize calls; __call__ is
            # what it was an alias of.
            tokenizer.batch_encode_plus = tokenizer.__call__
        t5.T5_CONFIGS[_MINILM] = {"model": AutoModel.from_pretrained(d).to(device), "tokenizer": tokenizer}

        def encode(prompts: list[str]):
            return [t5.t5_encode_text(prompts[i:i + 32], name=_MINILM, return_attn_mask=True)
                    for i in range(0, len(prompts), 32)]

        return encode


# ---------------------------------------------------------------------------------------
# diffusers, DeepFloyd IF layout
# ---------------------------------------------------------------------------------------

class Diffusers:
    NAME = "diffusers (IF)"
    SAMPLER = "DDPM (IF pipelines)"

    @staticmethod
    def default_steps(which: str) -> int:
        return 50 if which == "sr" else 100  # IFSuperResolutionPipeline / IFPipeline defaults

    @staticmethod
    def unet(spec: UNetSpec, suite: Suite):
        from diffusers import UNet2DConditionModel

        levels = range(len(spec.channel_mult))
        attends = [i in spec.attn_levels or i in spec.cross_attn_levels for i in levels]
        down = ["SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attends]
        up = ["SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attends)]
        kw = {}
        if spec.is_sr:  # IF stage II: the noise-augmentation level is a second timestep embedding
            kw = dict(class_embed_type="timestep", mid_block_scale_factor=1.414, time_embedding_act_fn="gelu")
        return UNet2DConditionModel(
            sample_size=spec.resolution,
            in_channels=6 if spec.is_sr else 3,
            out_channels=6,  # IF predicts eps and a learned variance range
            layers_per_block=spec.num_res_blocks,
            block_out_channels=spec.level_channels,
            down_block_types=down,
            up_block_types=up,
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            # Cross-attention only where the spec has no self-attention (IF's blocks do both).
            only_cross_attention=[i not in spec.attn_levels for i in levels],
            cross_attention_dim=spec.level_channels[-1],
            encoder_hid_dim=suite.text_dim,
            attention_head_dim=spec.head_dim,
            addition_embed_type="text",
            addition_embed_type_num_heads=max(1, suite.text_dim // 64),
            cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
            act_fn="gelu",
            **kw,
        )

    @staticmethod
    def scheduler(variance: bool = True):
        from diffusers import DDPMScheduler

        kw = dict(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.0,
                  variance_type="learned_range") if variance else {}
        return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                             prediction_type="epsilon", **kw)

    @classmethod
    def train_step(cls, suite: Suite, which: str, device: str, opts) -> tuple[Callable[[], None], int]:
        spec = suite.sr if which == "sr" else suite.base
        batch = suite.sr_train_batch if which == "sr" else suite.train_batch
        unet = cls.unet(spec, suite).to(device).train()
        n_params = sum(p.numel() for p in unet.parameters())
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)  # diffusers' training scripts
        sched = cls.scheduler()
        data = make_batch(spec, batch, suite, device)
        x0 = data["images"]

        def step() -> None:
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (x0.shape[0],), device=device)
            z = sched.add_noise(x0, noise, t)
            kw = {}
            if spec.is_sr:
                up = F.interpolate(data["lowres"], size=x0.shape[-2:], mode="bilinear", align_corners=True)
                aug = torch.randint(0, 1000, (x0.shape[0],), device=device)
                z = torch.cat([z, sched.add_noise(up, torch.randn_like(up), aug)], dim=1)
                kw["class_labels"] = aug
            # No text mask, as in the IF pipelines (padding embeddings are zeros).
            with autocast(device, "bf16" in opts):
                out = unet(z, t, encoder_hidden_states=data["text_emb"], **kw).sample
            loss = F.mse_loss(out[:, :3].float(), noise)  # the eps half; IF's variance term is extra
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step, n_params

    @classmethod
    def stage_sampler(cls, suite: Suite, which: str, device: str, steps: int, opts, guidance: float):
        from diffusers import IFPipeline, IFSuperResolutionPipeline

        spec = suite.sr if which == "sr" else suite.base
        unet = cls.unet(spec, suite).to(device).eval()
        data = make_batch(spec, suite.sample_batch, suite, device)
        common = dict(tokenizer=None, text_encoder=None, unet=unet, scheduler=cls.scheduler(),
                      safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)
        kw = dict(prompt_embeds=data["text_emb"], negative_prompt_embeds=torch.zeros_like(data["text_emb"]),
                  num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                  height=spec.resolution, width=spec.resolution)
        if which == "sr":
            pipe = IFSuperResolutionPipeline(image_noising_scheduler=cls.scheduler(variance=False), **common)
            kw["image"] = data["lowres"]
        else:
            pipe = IFPipeline(**common)
        pipe.set_progress_bar_config(disable=True)
        return lambda: pipe(**kw)

    @staticmethod
    def text_encoder(device: str):
        """IFPipeline.encode_prompt (pads every prompt to 77 tokens) on the same MiniLM model."""
        from diffusers import IFPipeline
        from transformers import AutoModel, AutoTokenizer

        from pixcade.text.encoders import minilm_directory

        d = str(minilm_directory())
        pipe = IFPipeline(tokenizer=AutoTokenizer.from_pretrained(d),
                          text_encoder=AutoModel.from_pretrained(d).to(device), unet=None,
                          scheduler=None, safety_checker=None, feature_extractor=None, watermarker=None,
                          requires_safety_checker=False)

        def encode(prompts: list[str]):
            return [pipe.encode_prompt(prompts[i:i + 32], do_classifier_free_guidance=False,
                                       device=torch.device(device)) for i in range(0, len(prompts), 32)]

        return encode


PEERS = {"imagen-pytorch": Imagen, "diffusers": Diffusers}
