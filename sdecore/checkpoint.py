"""The checkpoint folder (docs/design.md §5.3): read and write, atomically, with nothing unpickled.

    config.json              format version, model config, embedder name + fingerprint, credit
    weights.safetensors      the best epoch by validation loss (float16: inference only)
    train_state.safetensors  the last epoch's weights and optimizer (for --resume)
    history.json             per-epoch losses and the reference losses
    report.json              held-out metrics on the validation split
    map.safetensors/.json    the reference map (when one was fitted)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import DATA_CREDIT, FORMAT_VERSION, ModelConfig
from .embedding import Embedder
from .model import TextSDE

CONFIG, WEIGHTS, TRAIN_STATE, HISTORY, REPORT, FRONTIER = (
    "config.json", "weights.safetensors", "train_state.safetensors", "history.json", "report.json", "frontier.json")
MAP_TENSORS, MAP_META = "map.safetensors", "map.json"
# Files derived from one trained model: a new training run removes them all, so nothing stale
# is shown beside the new model.
DERIVED = (WEIGHTS, TRAIN_STATE, HISTORY, REPORT, FRONTIER, MAP_TENSORS, MAP_META)
_HERE = Path(__file__).resolve().parent
# The shipped model: assets/model beside the package in a checkout, sdecore/assets/model in an
# installed copy (pyproject.toml maps the one onto the other).
DEFAULT_MODEL_DIR = next((d for d in (_HERE.parent / "assets" / "model", _HERE / "assets" / "model") if d.is_dir()),
                         _HERE.parent / "assets" / "model")


def staging_folder(out: Path) -> Path:
    """Where ``train --overwrite`` builds the new checkpoint: a hidden sibling of ``out`` (the
    same file system, so it can be swapped in by a rename)."""
    return out.parent / f".{out.name}.overwrite"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False
    where the system or the file system cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def move_user_files(src: Path, dst: Path) -> None:
    """Move the entries of ``src`` that are not part of a checkpoint (a user's notes) into
    ``dst``, unless ``dst`` has one of that name."""
    if not src.is_dir():
        return
    for entry in src.iterdir():
        if entry.name not in (CONFIG, *DERIVED) and not entry.name.startswith(".") and not (dst / entry.name).exists():
            os.replace(entry, dst / entry.name)


def swap_in(staging: Path, out: Path) -> None:
    """Put the complete checkpoint in ``staging`` in the place of the one in ``out``: one atomic
    exchange where the system allows it (Linux: a process killed at any moment leaves ``out``
    holding the old or the new model), else two renames (a kill between them leaves ``out``
    missing, the new model in ``staging`` and the old one beside it). Files in the old folder
    that are not part of a checkpoint move into the new one (a kill before they have leaves
    them in ``staging``, from where the next run's :func:`move_user_files` brings them back);
    the old model is then deleted. This guards against killed processes, not power loss:
    nothing is fsynced."""
    import shutil

    if not _exchange(staging, out):
        old = out.parent / f".{out.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        staging = old
    move_user_files(staging, out)  # staging now holds the old model
    shutil.rmtree(staging, ignore_errors=True)


def _atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the checkpoint from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
    _atomic(Path(path), w)


def read_json(path: Path) -> dict:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                         "the checkpoint is corrupt: retrain it with `sdecore train`") from None


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], *, metadata: dict[str, str] | None = None,
                  dtype: torch.dtype | None = None) -> None:
    """Save tensors with safetensors; ``dtype`` casts the floating-point ones (e.g. float16
    for inference weights, half the size; loading casts them back into float32 parameters)."""
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); the checkpoint is corrupt: "
                         "retrain it with `sdecore train`") from None


def checkpoint_config(model_config: ModelConfig, embedder: Embedder, extra: dict | None = None) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "model": model_config.to_dict(),
        "embedder": {"name": embedder.name, "fingerprint": embedder.fingerprint},
        "data_credit": DATA_CREDIT,
        **(extra or {}),
    }


@dataclass
class Checkpoint:
    model: TextSDE
    embedder: Embedder
    config: dict
    history: dict
    folder: Path

    @property
    def credit(self) -> str:
        return self.config.get("data_credit", DATA_CREDIT)


def load_checkpoint(folder: str | Path | None = None, *, device: str | torch.device = "cpu",
                    embedder: Embedder | None = None) -> Checkpoint:
    """Load a checkpoint folder (default ``assets/model``) for inference.

    Raises ``FileNotFoundError`` for a missing folder or file and ``ValueError`` for a
    corrupt or mismatched one, with a message that says how to fix it.
    """
    folder = Path(folder) if folder is not None else DEFAULT_MODEL_DIR
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--model {folder} is a file; give the checkpoint folder that holds config.json")
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist; train one with `sdecore train --out {folder}`")
    cfg = read_json(folder / CONFIG)
    version = cfg.get("format_version") if isinstance(cfg, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{folder / CONFIG} has format version {version!r}, this sdecore reads {FORMAT_VERSION}; "
                         "retrain the model with this version")
    try:
        model_config = ModelConfig.from_dict(cfg["model"])
        emb_info = cfg["embedder"]
        emb_name, emb_fp = emb_info["name"], emb_info["fingerprint"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{folder / CONFIG} lacks field {exc}; the checkpoint is corrupt") from None
    embedder = embedder or Embedder.from_name(emb_name)
    if embedder.fingerprint != emb_fp:
        raise ValueError(f"checkpoint {folder} was trained on embedding table {emb_fp} but {emb_name!r} "
                         f"now has {embedder.fingerprint}; retrain the model")
    model = TextSDE(model_config, embedder)
    state = read_tensors(folder / WEIGHTS)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS} does not match its config.json (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}); the checkpoint is corrupt")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{folder / WEIGHTS} does not match its config.json ({str(exc).splitlines()[-1].strip()}); "
                         "the checkpoint is corrupt") from None
    history = read_json(folder / HISTORY) if (folder / HISTORY).is_file() else {}
    model.to(device).eval()
    return Checkpoint(model=model, embedder=embedder, config=cfg, history=history, folder=folder)
