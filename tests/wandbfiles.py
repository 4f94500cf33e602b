"""Reading offline W&B run files back, with no W&B server and no mocks.

wandb 0.31 writes offline runs to ``run-<id>.wandb``: a 7-byte header (b":W&B", magic 0xBEE1 as
little-endian uint16, version 0) followed by LevelDB-log-style records in 32 KiB blocks. Each physical
record is a 7-byte header (CRC-32 of type byte + payload: uint32; payload length: uint16; type: 1 full,
2 first, 3 middle, 4 last chunk) and its payload; a block's tail shorter than a header is zero padding.
Joined chunks are serialized ``wandb_internal_pb2.Record`` messages. The Python SDK no longer ships a
reader (the Go core reads these files), hence this one.
"""

import json
import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """All records of a ``.wandb`` run file, in order; checks the file header and every checksum."""
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B run file"
    records, chunks, pos = [], [], 7
    while pos + _HEADER.size <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER.size:  # padding at the end of a block
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        pos += _HEADER.size + length
        if kind == 0 and length == 0:  # preallocated, never written
            continue
        assert zlib.crc32(bytes([kind]) + payload) == crc, f"{path}: bad checksum at byte {pos}"
        chunks.append(payload)
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def _items(items) -> dict:
    """``{key: value}`` of history/config/summary items (values are stored as JSON). A media value
    (a table, an image) comes as several items under a nested key, e.g. ``("samples/text", "path")``;
    they are gathered into one dict: ``{"samples/text": {"path": ..., "_type": "table-file", ...}}``."""
    out: dict = {}
    for item in items:
        *parents, last = item.nested_key or [item.key]
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = json.loads(item.value_json)
    return out


def _metric(record: wandb_internal_pb2.MetricRecord) -> dict:
    """A ``define_metric`` record: its x-axis and the summaries it asked for (``{"min"}``...)."""
    summary = {field.name for field, on in record.summary.ListFields() if on}
    return {"step_metric": record.step_metric, "summary": summary}


def read_wandb_run(run_dir: Path) -> dict:
    """An offline run folder read back.

    Returns:
        ``id`` (of the run record), ``resumed`` (whether ``wandb.init`` was asked to resume),
        ``history`` (one dict per logged row), ``config``, ``summary`` (the last value of each key),
        ``metrics`` (``define_metric`` records by metric name, see ``_metric``), ``files`` (paths saved
        with the run, relative to its ``files/`` folder) and ``exit_code`` (None if not finished).
    """
    (path,) = Path(run_dir).glob("run-*.wandb")
    run = {
        "id": None,
        "resumed": None,
        "history": [],
        "config": {},
        "summary": {},
        "metrics": {},
        "files": [],
    }
    run["exit_code"] = None
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"], run["resumed"] = record.run.run_id, record.run.resume
            run["config"].update(_items(record.run.config.update))
        elif kind == "history":
            run["history"].append(_items(record.history.item))
        elif kind == "config":
            run["config"].update(_items(record.config.update))
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
        elif kind == "metric" and record.metric.name:
            run["metrics"][record.metric.name] = _metric(record.metric)
        elif kind == "files":
            run["files"] += [item.path for item in record.files.files]
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run
