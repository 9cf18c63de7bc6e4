"""Tiles -> embeddings with reads overlapped with compute: DataLoader workers, pinned memory, async copies.

Shared by ``extract.py`` and ``bench.py`` so the benchmark measures the code that runs.

* ``TileBatches``: batch ``i`` = tiles ``coords[i*bs:(i+1)*bs]`` read by a ``TileReader`` (OpenSlide, or cuCIM
  when asked for and installed). The reader is pickled without its handle, so each worker process opens its own
  (OpenSlide handles are not shareable across processes).
* ``make_loader``: ``num_workers`` processes read ahead ``prefetch`` batches each while the main process runs
  the encoder; on CUDA the batches come back in pinned memory and are copied with ``non_blocking=True``.
* ``prepare_encoder``: ``channels_last`` on CUDA (the patch-embedding convolution's fast layout) and optional
  ``torch.compile`` of the embedding function.
* ``embed_batches``: preprocess + embed under ``torch.autocast`` (bf16/fp16 when asked for; fp32 otherwise),
  keeping the results on the device until the slide is done, so the GPU never waits for a device-to-host copy.
"""
from __future__ import annotations

import numpy as np
import torch

from patches.pathology.wsi import BadTile, TileReader

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on the CPU."""
    if precision != "auto":
        return precision
    if not str(device).startswith("cuda"):
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class TileBatches(torch.utils.data.Dataset):
    """Batch ``i`` of a slide's tiles: (uint8 tensor [B, H, W, 3], indices into ``coords``, bad tiles)."""

    def __init__(self, reader: TileReader, coords: np.ndarray, batch_size: int):
        self.reader, self.coords, self.batch_size = reader, coords, batch_size

    def __len__(self) -> int:
        return (len(self.coords) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int):
        start = i * self.batch_size
        tiles, index, bad = self.reader.read_batch(self.coords[start:start + self.batch_size])
        stack = np.stack(tiles) if tiles else np.zeros((0, 1, 1, 3), np.uint8)
        return (torch.from_numpy(stack), torch.from_numpy(np.asarray(index, np.int64) + start),
                [(b.x, b.y, b.error) for b in bad])


def _as_is(batch):
    return batch


def _worker_init(_):
    torch.set_num_threads(1)  # readers decode with their own threads; one torch thread per worker is enough


def make_loader(reader: TileReader, coords: np.ndarray, batch_size: int, num_workers: int = 0,
                prefetch: int = 2, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    extra = dict(prefetch_factor=prefetch, worker_init_fn=_worker_init) if num_workers > 0 else {}
    return torch.utils.data.DataLoader(TileBatches(reader, coords, batch_size), batch_size=None,
                                       num_workers=num_workers, collate_fn=_as_is, pin_memory=pin_memory, **extra)


def prepare_encoder(encoder, device: str, compile_model: bool = False):
    """The encoder on ``device`` (channels_last on CUDA) and the embedding function to call (compiled or not)."""
    encoder = encoder.to(device).eval()
    if str(device).startswith("cuda"):
        encoder = encoder.to(memory_format=torch.channels_last)
    embed = torch.compile(encoder.embed) if compile_model else encoder.embed
    return encoder, embed


@torch.inference_mode()
def embed_batches(loader, encoder, embed, n_tiles: int, precision: str = "fp32", on_batch=None):
    """Run every batch through ``encoder.preprocess`` + ``embed``.

    Returns (float32 array [n_tiles, D] with rows of unread tiles left zero, bool mask of read rows, bad tiles).
    ``on_batch(n)`` is called with the number of tiles handled (progress bars).
    """
    device = next(encoder.parameters()).device
    cuda = device.type == "cuda"
    dtype = PRECISIONS[precision]
    outputs, indices, bad = [], [], []
    for tiles, index, bad_batch in loader:
        bad.extend(BadTile(x, y, err) for x, y, err in bad_batch)
        if len(index):
            x = encoder.preprocess(tiles.to(device, non_blocking=cuda))
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not torch.float32):
                outputs.append(embed(x).float())
            indices.append(index)
        if on_batch is not None:
            on_batch(len(index) + len(bad_batch))
    dim = int(encoder.config.embedding_dim)
    feats = np.zeros((n_tiles, dim), np.float32)
    got = np.zeros(n_tiles, bool)
    if outputs:
        index = torch.cat(indices).numpy()
        feats[index] = torch.cat(outputs).cpu().numpy()  # one device-to-host copy per slide
        got[index] = True
    return feats, got, bad
