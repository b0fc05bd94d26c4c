"""Presets: pathology foundation models as their reference tools build and feed them.

One :class:`Preset` per encoder, filled from the reference tools (TRIDENT's
``trident/patch_encoder_models/load.py``, CONCH's ``open_clip_custom``, CLAM) and the
authors' model cards. A user names the preset and gives the weights file; the rest
(constructor and kwargs, normalisation, tiling, resize, embedding recipe, the weights
file's key layout) comes from here.

The tiling is what TRIDENT reads from the slide: ``tile_px`` pixels at ``magnification``
(20x = 0.5 um/px), which become the featureset's tiling (``tiles.px`` and ``tiles.um``)
unless the config says otherwise. The backend then turns each tile into the network's
input: resized so the shorter side is ``resize_px`` (``interpolation``, antialiased as PIL
does), then centre-cropped to ``input_px`` (a no-op when ``resize_px == input_px``). This
module imports neither torch nor timm: the workflow reads presets before any job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from histoatlas.errors import ConfigError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

TIMM_VIT = "timm ViT keys as timm names them (cls_token, pos_embed, blocks.N.*, norm.*), no prefix"


@dataclass(frozen=True)
class Preset:
    """How one foundation model is built, fed and loaded.

    Attributes
    ----------
    name : str
        The preset's name, as ``params.json`` ``architecture`` gives it.
    model : str
        What it is (shown to users).
    constructor : str
        ``timm:<name>`` (built with ``timm.create_model``) or ``histoatlas:<name>`` (a
        module of :mod:`histoatlas.backends.torch.encoders`).
    kwargs : mapping
        Constructor keyword arguments, JSON-able: classes are named by string
        (``"mlp_layer": "swiglupacked"``), see :func:`resolve_architecture_kwargs`.
    recipe : str
        How the embedding comes from the network: ``output`` (its output as is), or a
        token recipe (``cls``, ``patch_mean``, ``cls+patch_mean``) on the tokens of
        ``forward_features``.
    dim : int
        Width of the embedding.
    input_px : int
        Network input, pixels.
    tile_px, magnification : int, str
        What the reference tool reads from the slide.
    resize_px, interpolation : int, str
        Shorter side after resizing, and how (``bilinear`` or ``bicubic``).
    mean, std : tuple of float
        Normalisation of RGB in [0, 1].
    precision : str
        The reference tool's inference precision on GPU.
    weights_file, weights_url : str
        The file the authors publish, and where.
    layout : str
        Its key layout, in words.
    weights_key, weights_prefix : str or None
        Where the state dict sits in the file (see :func:`select_state_dict`).
    ignore_keys : tuple of str
        Glob patterns of keys the encoder does not use (dropped before loading).
    convert : str or None
        Key conversion from the published layout (see :mod:`.convert`).
    source : str
        Where these facts come from.
    """

    name: str
    model: str
    constructor: str
    kwargs: Mapping = field(default_factory=dict)
    recipe: str = "cls"
    dim: int = 0
    input_px: int = 224
    tile_px: int = 224
    magnification: str = "20x"
    resize_px: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET[0]
    std: tuple[float, float, float] = IMAGENET[1]
    precision: str = "float32"
    weights_file: str = "pytorch_model.bin"
    weights_url: str = ""
    layout: str = TIMM_VIT
    weights_key: str | None = None
    weights_prefix: str | None = None
    ignore_keys: tuple[str, ...] = ()
    convert: str | None = None
    source: str = ""

    @property
    def um_per_px(self) -> float:
        """Microns per pixel of the tiling (20x = 0.5, 10x = 1.0)."""
        return 10.0 / float(self.magnification.rstrip("x"))

    @property
    def tile_um(self) -> float:
        """Microns covered by the tile read from the slide (``tile_px`` pixels)."""
        return self.tile_px * self.um_per_px

    @property
    def center_crop(self) -> bool:
        """Whether the resized tile is centre-cropped to ``input_px``."""
        return self.resize_px != self.input_px

    def summary(self) -> dict:
        """One row of the users' table: model, file, where published, dim, tiling."""
        steps = []
        if self.resize_px != self.tile_px:
            steps.append(f"resize {self.tile_px} -> {self.resize_px} {self.interpolation}")
        if self.center_crop:
            steps.append(f"centre crop {self.input_px}")
        return {
            "preset": self.name,
            "model": self.model,
            "weights_file": self.weights_file,
            "published_at": self.weights_url,
            "dim": self.dim,
            "tiling": f"{self.tile_px} px @{self.magnification} ({self.tile_um:g} um)",
            "input": ", ".join(steps) or "as read",
            "embedding": "network output" if self.recipe == "output" else self.recipe,
            "precision": self.precision,
        }


_LARGE_UNI = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
              "dynamic_img_size": True}  # fmt: skip
_VIRCHOW = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
            "global_pool": "", "dynamic_img_size": True, "mlp_layer": "swiglupacked",
            "act_layer": "silu"}  # fmt: skip
_HOPTIMUS = {"num_classes": 0, "img_size": 224, "global_pool": "token", "init_values": 1e-5,
             "dynamic_img_size": True}  # fmt: skip

_PRESETS = (
    Preset(
        name="uni", model="UNI (ViT-L/16)", constructor="timm:vit_large_patch16_224",
        kwargs=_LARGE_UNI, recipe="cls", dim=1024, tile_px=256, precision="float16",
        weights_url="https://huggingface.co/MahmoodLab/UNI", source="TRIDENT UNIInferenceEncoder",
    ),
    Preset(
        name="uni2-h", model="UNI2-h (ViT-H/14, 8 registers)",
        constructor="timm:vit_giant_patch14_224",
        kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                "num_classes": 0, "no_embed_class": True, "mlp_layer": "swiglupacked",
                "act_layer": "silu", "reg_tokens": 8, "dynamic_img_size": True},
        recipe="cls", dim=1536, tile_px=256, precision="bfloat16",
        weights_url="https://huggingface.co/MahmoodLab/UNI2-h",
        source="TRIDENT UNIv2InferenceEncoder",
    ),
    Preset(
        name="virchow", model="Virchow (ViT-H/14)", constructor="timm:vit_huge_patch14_224",
        kwargs=_VIRCHOW, recipe="cls+patch_mean", dim=2560, interpolation="bicubic",
        precision="float16", weights_url="https://huggingface.co/paige-ai/Virchow",
        source="TRIDENT VirchowInferenceEncoder (CLS || mean of tokens[1:])",
    ),
    Preset(
        name="virchow2", model="Virchow2 (ViT-H/14, 4 registers)",
        constructor="timm:vit_huge_patch14_224", kwargs={**_VIRCHOW, "reg_tokens": 4},
        recipe="cls+patch_mean", dim=2560, interpolation="bicubic", precision="float16",
        weights_url="https://huggingface.co/paige-ai/Virchow2",
        source="TRIDENT Virchow2InferenceEncoder (CLS || mean of tokens[5:])",
    ),
    *(
        Preset(
            name=f"h-optimus-{v}", model=f"H-optimus-{v} (ViT-g/14, 4 registers)",
            constructor="timm:vit_giant_patch14_reg4_dinov2", kwargs=_HOPTIMUS, recipe="cls",
            dim=1536, mean=HOPTIMUS[0], std=HOPTIMUS[1], precision="float16",
            weights_url=f"https://huggingface.co/bioptimus/H-optimus-{v}",
            source=f"TRIDENT HOptimus{v}InferenceEncoder",
        )
        for v in (0, 1)
    ),
    Preset(
        name="gigapath", model="Prov-GigaPath tile encoder (ViT-g/16)",
        constructor="timm:vit_giant_patch14_dinov2",
        kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                "depth": 40, "num_heads": 24, "mlp_ratio": 5.33334, "num_classes": 0,
                "dynamic_img_size": True},
        recipe="cls", dim=1536, tile_px=256, resize_px=256, interpolation="bicubic",
        precision="float16", weights_url="https://huggingface.co/prov-gigapath/prov-gigapath",
        source="TRIDENT GigaPathInferenceEncoder",
    ),
    Preset(
        name="gpfm", model="GPFM (ViT-L/14, DINOv2)",
        constructor="timm:vit_large_patch14_dinov2",
        kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                "dynamic_img_size": True},
        recipe="cls", dim=1024, interpolation="bicubic", precision="float16",
        weights_file="GPFM.pth", weights_url="https://huggingface.co/majiabo/GPFM",
        layout=TIMM_VIT + "; possibly wrapped under 'state_dict'",
        source="TRIDENT GPFMInferenceEncoder",
    ),
    Preset(
        name="conch-v1", model="CONCH v1 image encoder (ViT-B/16 + attention pooler)",
        constructor="histoatlas:conch_v1", kwargs={"img_size": 448}, recipe="output",
        dim=512, input_px=448, tile_px=512, resize_px=448, interpolation="bicubic",
        mean=OPENAI_CLIP[0], std=OPENAI_CLIP[1], precision="float32",
        weights_url="https://huggingface.co/MahmoodLab/CONCH",
        layout="the whole CoCa model: visual.trunk.* (timm ViT), visual.attn_pool_contrast.*, "
        "visual.ln_contrast.*, visual.proj_contrast, visual.attn_pool_caption.*, "
        "visual.ln_caption.*, text.*, text_decoder.*, logit_scale",
        weights_prefix="visual.",
        ignore_keys=("proj_contrast", "attn_pool_caption.*", "ln_caption.*"),
        source="CONCH coca_model.encode_image(proj_contrast=False, normalize=False); "
        "TRIDENT Conchv1InferenceEncoder",
    ),
    Preset(
        name="conch-v1.5", model="CONCH v1.5 (ViT-L/16 + attention pooler)",
        constructor="histoatlas:conch_v15", kwargs={"img_size": 448}, recipe="output",
        dim=768, input_px=448, tile_px=512, resize_px=448, interpolation="bilinear",
        precision="float16", weights_file="pytorch_model_vision.bin",
        weights_url="https://huggingface.co/MahmoodLab/conchv1_5",
        layout="trunk.* (iBOT/timm ViT-L, LayerScale), attn_pool_contrast.{query,ln_k,ln_q,"
        "to_q,to_kv,to_out}, ln_contrast.*; trunk.pos_embed for a 224 px grid",
        convert="conch_v15",
        source="TRIDENT model_zoo/conchv1_5 (from TITAN's return_conch)",
    ),
    Preset(
        name="phikon", model="Phikon (ViT-B/16, iBOT)", constructor="timm:vit_base_patch16_224",
        kwargs={"img_size": 224, "num_classes": 0,
                "norm_layer": {"name": "layernorm", "eps": 1e-12}},
        recipe="cls", dim=768, precision="float32",
        weights_url="https://huggingface.co/owkin/phikon",
        layout="Hugging Face ViTModel (transformers 4 names: embeddings.*, encoder.layer.N."
        "attention.attention.{query,key,value}, layernorm, pooler.*)",
        ignore_keys=("pooler.*",), convert="hf_vit",
        source="TRIDENT PhikonInferenceEncoder (last_hidden_state[:, 0])",
    ),
    Preset(
        name="phikon-v2", model="Phikon-v2 (ViT-L/16, DINOv2)", recipe="cls", dim=1024,
        constructor="timm:vit_large_patch16_224", precision="float32",
        kwargs={"img_size": 224, "num_classes": 0, "init_values": 1.0},
        weights_file="model.safetensors", weights_url="https://huggingface.co/owkin/phikon-v2",
        layout="Hugging Face Dinov2Model (embeddings.*, encoder.layer.N.{norm1,attention,"
        "layer_scale1,norm2,mlp,layer_scale2}, layernorm), safetensors",
        convert="hf_dinov2", ignore_keys=("embeddings.mask_token",),
        source="TRIDENT Phikonv2InferenceEncoder (last_hidden_state[:, 0])",
    ),
    Preset(
        name="ctranspath", model="CTransPath (Swin-T with a convolutional stem)",
        constructor="histoatlas:ctranspath", kwargs={}, recipe="output", dim=768,
        tile_px=256, magnification="10x", precision="float32",
        weights_file="CHIEF_CTransPath.pth",
        weights_url="https://huggingface.co/datasets/MahmoodLab/hest-bench "
        "(fm_v1/ctranspath)",
        layout="timm 0.5.4 Swin under 'model' (downsample at the end of each stage, "
        "attn_mask and relative_position_index buffers saved)",
        weights_key="model",
        ignore_keys=("*.attn_mask", "*.relative_position_index", "head.*"),
        convert="transpath_swin", source="TRIDENT CTransPathInferenceEncoder; TransPath ctran.py",
    ),
    Preset(
        name="resnet50_trunc", model="ResNet-50 (ImageNet) up to layer3, average-pooled",
        constructor="histoatlas:resnet50_trunc", kwargs={}, recipe="output", dim=1024,
        tile_px=256, precision="float32", weights_file="resnet50-0676ba61.pth",
        weights_url="https://download.pytorch.org/models/ (torchvision IMAGENET1K_V1)",
        layout="torchvision ResNet-50 (conv1, bn1, layer1..layer4, fc)",
        ignore_keys=("layer4.*", "fc.*"), source="CLAM resnet50_trunc; TRIDENT resnet50",
    ),
)  # fmt: skip

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case-insensitive; ``_`` and ``-`` are the same).

    Raises
    ------
    ConfigError
        If there is none; the message lists the presets.
    """
    key = name.lower().replace("_", "-")
    for preset in PRESETS.values():
        if preset.name.replace("_", "-") == key:
            return preset
    raise ConfigError(f"no encoder preset {name!r}; presets: {', '.join(PRESETS)}")


def is_preset(name: str) -> bool:
    """Whether ``name`` names a preset."""
    try:
        get_preset(name)
    except ConfigError:
        return False
    return True


def params_defaults(architecture: object) -> dict:
    """The ``params.json`` keys a preset fills in, or ``{}`` if ``architecture`` names none.

    A model directory whose ``params.json`` says ``{"architecture": "uni2-h"}`` gets the
    preset's weights file name, tiling (``tile_px`` at its magnification), model input
    (``input_px``, ``resize_px``, ``interpolation``), normalisation, and ``output:
    "embedding"`` (an encoder: its final output is the embedding, not class scores). Keys
    the file gives win.

    Examples
    --------
    >>> d = params_defaults("uni")
    >>> d["tile_px"], d["tile_um"], d["input_px"], d["output"]
    (256, '20x', 224, 'embedding')
    >>> params_defaults("timm:vit_large_patch16_224")
    {}
    """
    if not isinstance(architecture, str) or not is_preset(architecture):
        return {}
    p = get_preset(architecture)
    return {
        "weights": p.weights_file,
        "tile_px": p.tile_px,
        "tile_um": p.magnification,
        "input_px": p.input_px,
        "resize_px": p.resize_px,
        "interpolation": p.interpolation,
        "mean": list(p.mean),
        "std": list(p.std),
        "class_names": [],
        "output": "embedding",
    }


def list_presets() -> list[dict]:
    """One summary dict per preset, in table order (see :meth:`Preset.summary`).

    Examples
    --------
    >>> [row["preset"] for row in list_presets()][:3]
    ['uni', 'uni2-h', 'virchow']
    """
    return [p.summary() for p in PRESETS.values()]


def presets_markdown() -> str:
    """The README's preset table (Markdown), generated from :func:`list_presets`."""
    titles = {"preset": "preset", "model": "model", "weights_file": "weights file",
              "published_at": "where its authors publish it", "dim": "dim",
              "embedding": "embedding (`postconv`)", "tiling": "tiling",
              "input": "network input"}  # fmt: skip
    cols = tuple(titles)
    lines = ["| " + " | ".join(titles.values()) + " |", "|" + "---|" * len(cols)]
    for row in list_presets():
        cells = [f"`{row[c]}`" if c in ("preset", "weights_file") else str(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def eval_transform(preset: Preset | str):
    """The reference tools' torchvision transform for a PIL tile read as the preset says.

    Resize the shorter side to ``resize_px`` (PIL, antialiased), centre-crop ``input_px``,
    ``ToTensor``, normalise. For checking histoatlas's own tensor-side preprocessing.
    """
    from torchvision import transforms

    if isinstance(preset, str):
        preset = get_preset(preset)
    mode = getattr(transforms.InterpolationMode, preset.interpolation.upper())
    steps = [transforms.Resize(preset.resize_px, interpolation=mode)]
    if preset.center_crop:
        steps.append(transforms.CenterCrop(preset.input_px))
    steps += [transforms.ToTensor(), transforms.Normalize(preset.mean, preset.std)]
    return transforms.Compose(steps)
