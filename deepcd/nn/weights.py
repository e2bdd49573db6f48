"""Trained solvers on disk: safetensors weights plus a JSON card, loaded without unpickling.

A solver is a folder `NAME/` with `weights.safetensors` and `card.json`. The card holds the
architecture and the config that rebuilds it, the SHA-256 of the weights file, and the
training record (recipe, command, wall time, hardware, losses, measured iterations).
Loading checks the hash, the tensor names and shapes against the rebuilt module, and refuses
anything that is not a safetensors file (pickles included) with a clear ValueError.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS = "weights.safetensors"
CARD = "card.json"
CARD_FORMAT = "deepcd-solver-v1"
# Shipped solvers live in the repository's solvers/ folder (and in the wheel beside the package).
SOLVER_DIRS = (
    Path(__file__).resolve().parents[2] / "solvers",
    Path(__file__).resolve().parents[1] / "solvers",
)


MAX_WEIGHTS_BYTES = 1 << 30  # the paper's largest network is ~0.6 MiB; shipped ones ~1 KiB


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_solver(directory: str | os.PathLike, model: torch.nn.Module, card: dict[str, Any]) -> Path:
    """Write `model` (with `.arch` and `.config`) and its card into `directory` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = directory / f".{WEIGHTS}.partial-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": CARD_FORMAT, "arch": model.arch})
    os.replace(tmp, directory / WEIGHTS)
    full = {
        **card,
        "format": CARD_FORMAT,
        "arch": model.arch,
        "config": model.config,
        "weights_sha256": sha256(directory / WEIGHTS),
        "parameters": int(sum(t.numel() for t in tensors.values())),
    }
    tmp_card = directory / f".{CARD}.partial-{os.getpid()}"
    tmp_card.write_text(json.dumps(full, indent=1) + "\n")
    os.replace(tmp_card, directory / CARD)
    return directory


# The shipped solver `solve(method="dcdm")` uses when no model is given, per grid dimension.
DEFAULT_SOLVERS = {2: "vcycle-2d", 3: "vcycle-3d"}


def default_solver(dim: int) -> str:
    """The name of the shipped solver for `dim`-D grids."""
    if dim not in DEFAULT_SOLVERS:
        raise ValueError(f"no shipped solver for {dim}D grids; deepcd has 2D and 3D solvers")
    return DEFAULT_SOLVERS[dim]


def shipped_solvers() -> list[Path]:
    """The folders of the shipped solvers (repository checkout or installed wheel)."""
    found: dict[str, Path] = {}
    for root in SOLVER_DIRS:
        for card in sorted(root.glob(f"*/{CARD}")):
            found.setdefault(card.parent.name, card.parent)
    return [found[name] for name in sorted(found)]


def resolve_solver(name_or_path: str | os.PathLike) -> Path:
    """A solver folder from a path or the name of a shipped solver."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    for root in SOLVER_DIRS:
        if (root / str(name_or_path) / CARD).exists():
            return root / str(name_or_path)
    shipped = [p.name for p in shipped_solvers()]
    raise FileNotFoundError(
        f"no solver folder {name_or_path!r}; shipped solvers: {', '.join(shipped) or 'none'}"
    )


def read_card(directory: Path) -> dict[str, Any]:
    try:
        card = json.loads((directory / CARD).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} has no {CARD}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / CARD} is not valid JSON: {err}") from err
    if card.get("format") != CARD_FORMAT:
        raise ValueError(
            f"{directory / CARD} is not a deepcd solver card (format "
            f"{card.get('format')!r}, expected {CARD_FORMAT!r})"
        )
    for key in ("arch", "config", "weights_sha256"):
        if key not in card:
            raise ValueError(f"{directory / CARD} lacks {key!r}")
    return card


def load_solver(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode on `device`, card). Never unpickles; refuses tampered weights."""
    from deepcd.nn.networks import build_network

    directory = resolve_solver(name_or_path)
    card = read_card(directory)
    weights = directory / WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS}")
    info = weights.stat()  # follows symlinks: what would be read
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f"{weights} is not a regular file (a device, pipe or a link to one): refusing to "
            "read it"
        )
    if info.st_size > MAX_WEIGHTS_BYTES:
        raise ValueError(
            f"{weights} is {info.st_size / 2**20:.0f} MiB, more than any solver's weights "
            f"({MAX_WEIGHTS_BYTES / 2**20:.0f} MiB at most): refusing to read it"
        )
    digest = sha256(weights)
    if digest != card["weights_sha256"]:
        raise ValueError(
            f"{weights} does not match its card (sha256 {digest[:12]}…, card says "
            f"{card['weights_sha256'][:12]}…): the file was changed or replaced"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights} is not a valid safetensors file: {err}") from err
    model = build_network(card["arch"], **card["config"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])[:3]
        raise ValueError(
            f"{weights} does not fit architecture {card['arch']!r}: missing {missing}, "
            f"unexpected {extra}, wrong shapes {wrong}"
        )
    model.load_state_dict(tensors)
    return model.to(device).eval(), card
