"""Fixes to gradio 6.31, installed when the app imports this module: two in its file cache that a busy Space hits
and no setting avoids, and one in its API's answer to a malformed call. Each keeps gradio's behaviour otherwise.

1. Rewriting a file while it is being served. gradio stores a picture an event returns under a folder named by
   the hash of its bytes, and writes it there every time (``path.write_bytes``: truncate, then write). Two requests
   that return the same picture (the same seed and settings, as every API call with the defaults has) write the
   same file; one truncating it while a client downloads the other's copy cuts that download off ("peer closed
   connection without sending complete message body (received 0 bytes ...)"). Here, as gradio already does for
   files it copies (``save_file_to_cache``), a picture whose file exists is not written again, and a new one is
   written under a temporary name and renamed into place, so a reader sees the whole file or none.
2. The periodic cleanup stopping for good. gradio loops over the live sets of files requests create while they
   are created, fails with "Set changed size during iteration", and its cleanup task then ends: files pile up.
   Here it runs on copies of those sets.
3. A raw API call with too few values. gradio answers with the Python reprs of the page's components and prints a
   traceback, as for a fault of the server. Here the answer names the endpoint and the values it takes, and the
   log stays clean: it is the caller's mistake.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import gradio as gr
from gradio import processing_utils, route_utils
from PIL import Image

_gradio_cleanup = route_utils.delete_files_created_by_app
gradio_save_pil_to_cache = processing_utils.save_pil_to_cache  # gradio's own, kept for the test that shows the bug


def save_pil_to_cache(img: Image.Image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio's save_pil_to_cache, never rewriting a file another request may be serving."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    if path.exists():  # the same bytes (the folder is their hash); touched, as gradio's cleanup ages by ctime
        try:
            os.utime(path)
        except OSError:
            pass
        return str(path)
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(path)


def cleanup_on_snapshots(blocks, age: int | None) -> None:
    """gradio's periodic deletion of generated files, run on copies of its file sets (see the module's note)."""
    live = blocks.temp_file_sets
    before = [files.copy() for files in live]  # set.copy() holds the GIL: a consistent snapshot
    blocks.temp_file_sets = [files.copy() for files in before]
    try:
        _gradio_cleanup(blocks, age)
    finally:
        left, blocks.temp_file_sets = blocks.temp_file_sets, live
        for files, old, kept in zip(live, before, left, strict=True):
            files -= old - kept


def validate_inputs(self: gr.Blocks, block_fn, inputs: list) -> None:
    """gradio's check that a call carries a value for each input (it lets extra values through, as here)."""
    needed = block_fn.inputs
    if len(inputs) < len(needed):
        endpoint = f"/{block_fn.api_name}" if block_fn.api_name else "this event"
        names = ", ".join(getattr(b, "label", None) or b.get_block_name() for b in needed)
        raise gr.Error(f"{endpoint} takes {len(needed)} values ({names}), got {len(inputs)}", title="Invalid input",
                       print_exception=False)


# Where gradio looks them up at each call (save_img_array_to_cache and every component call them through the module).
processing_utils.save_pil_to_cache = save_pil_to_cache
route_utils.delete_files_created_by_app = cleanup_on_snapshots
gr.Blocks.validate_inputs = validate_inputs
