"""Tensor sources: a checkpoint's tensors by name, read one at a time, never by running code.

Every source has the same small interface (:class:`TensorSource`): ``keys()``,
``shape(key)``, ``dtype(key)`` and ``read(key)``, plus ``path`` for messages.
Shapes and dtypes come from the file's header, so a loader checks every name and shape
before it reads any data.  Sources here: a single ``model.safetensors`` and a sharded
one (``model.safetensors.index.json``); GGUF files have theirs in
:mod:`headwise.models._gguf`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from headwise.errors import CheckpointError
from headwise.models._files import read_json

__all__ = ["SafetensorsSource", "ShardedSafetensorsSource", "TensorSource", "folder_source"]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
#: the float dtypes a checkpoint may store, by safetensors' names
FLOAT_DTYPES = tuple(_SAFETENSORS_DTYPES)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class TensorSource(Protocol):
    """A checkpoint's tensors by name."""

    path: Path

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def dtype(self, key: str) -> torch.dtype | str: ...

    def read(self, key: str) -> Tensor: ...


class SafetensorsSource:
    """The tensors of one safetensors file (its header is read at construction, the data on ``read``)."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = path
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                slices = {key: f.get_slice(key) for key in f.keys()}
                self._shapes = {key: tuple(s.get_shape()) for key, s in slices.items()}
                codes = {key: s.get_dtype() for key, s in slices.items()}
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err}).") from err
        self._dtypes = {key: _SAFETENSORS_DTYPES.get(code, code) for key, code in codes.items()}

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype | str:
        return self._dtypes[key]

    def read(self, key: str) -> Tensor:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{self.path}: tensor {key!r} cannot be read ({err}).") from err


class ShardedSafetensorsSource:
    """The tensors of a sharded checkpoint: ``model.safetensors.index.json`` and its shard files."""

    def __init__(self, index: Path) -> None:
        self.path = index
        raw = read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CheckpointError(
                f"{index}: expected an object with a 'weight_map' of tensor name -> shard file, as "
                "transformers writes it."
            )
        self._shards: dict[str, SafetensorsSource] = {}
        for name in sorted(set(weight_map.values())):
            shard = index.parent / name
            if Path(name).name != name:
                raise CheckpointError(f"{index}: shard {name!r} is not a file name in the folder.")
            if not shard.is_file():
                raise FileNotFoundError(f"{index} names the shard {name}, which does not exist in {index.parent}.")
            self._shards[name] = SafetensorsSource(shard)
        self._where: dict[str, SafetensorsSource] = {}
        for key, name in weight_map.items():
            shard = self._shards[name]
            if key not in shard._shapes:
                raise CheckpointError(f"{index}: tensor {key!r} is listed in {name}, which does not hold it.")
            self._where[key] = shard

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def dtype(self, key: str) -> torch.dtype | str:
        return self._where[key].dtype(key)

    def read(self, key: str) -> Tensor:
        return self._where[key].read(key)


def folder_source(folder: Path) -> SafetensorsSource | ShardedSafetensorsSource:
    """The weights of a Hugging Face folder: ``model.safetensors``, or its sharded index."""
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return SafetensorsSource(single)
    if index.is_file():
        return ShardedSafetensorsSource(index)
    hint = ""
    if (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        hint = (
            " The folder has pytorch_model.bin, a pickle, which headwise never loads (unpickling can "
            "run code); convert it to safetensors once with a tool you trust."
        )
    raise FileNotFoundError(
        f"{single} does not exist; headwise loads weights from model.safetensors (or a sharded "
        f"{INDEX_NAME}).{hint}"
    )
