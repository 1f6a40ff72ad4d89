"""Search at a size not embedded: grow a ``scale.py`` database with model-like vectors (issue 15).

Copies the database ``scale.py --keep`` left (``WORK/db-N``), adds ``copies`` copies of its
chunks under new ids whose vectors are drawn from a Gaussian fitted to its own vectors (the tiny
random model's vectors are close to one, docs/indexes.md), rebuilds every index with
``Store.refresh_indexes(retrain=True)`` (the code under test: type, partitions, tuning), serves
the new version, and runs ``scale.py``'s own search script on it (latency per mode through
``embedpipe.open``, ANN recall against exact search, then a retrain and a refresh).

    python benchmarks/scale.py --sizes 100000 --work /tmp/w --keep
    python benchmarks/scale_grow.py /tmp/w --rows 100000 --copies 9     # about 1M rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale
from ann_queries import gauss


def grow(src: Path, dst: Path, copies: int) -> dict[str, object]:
    from embedpipe.config import get_settings
    from embedpipe.schemas import C
    from embedpipe.store import SERVING_TAG, Store

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    settings = get_settings({"store": {"uri": str(dst)}})
    store = Store(settings.store)
    base = store.require_table().to_arrow()
    vectors = gauss(str(src / f"{settings.store.table}.lance"), copies * base.num_rows)
    vtype = base.schema.field(C.VECTOR).type
    for i in range(copies):
        part = base
        for col in (C.CHUNK_ID, C.DOC_ID):
            ids = pa.array([f"{x}-grown{i}" for x in base.column(col).to_pylist()])
            part = part.set_column(part.schema.get_field_index(col), part.schema.field(col), ids)
        v = vectors[i * base.num_rows : (i + 1) * base.num_rows]
        col = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1]).cast(vtype)
        part = part.set_column(part.schema.get_field_index(C.VECTOR), part.schema.field(C.VECTOR), col)
        store.require_table().add(part)
    t = time.perf_counter()
    done = store.refresh_indexes(settings.index, retrain=True)
    took = time.perf_counter() - t
    table = store.require_table()
    version = int(table.version)
    if SERVING_TAG in table.tags.list():
        table.tags.update(SERVING_TAG, version)
    else:
        table.tags.create(SERVING_TAG, version)
    return {"rows": table.count_rows(), "index_s": round(took, 1), "actions": done.actions}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", help="scale.py's work folder (kept with --keep)")
    ap.add_argument("--rows", type=int, default=100_000, help="the size scale.py built (db-ROWS)")
    ap.add_argument("--copies", type=int, default=9, help="copies of the rows to add")
    args = ap.parse_args()
    work = Path(args.work)
    dst = work / f"db-{args.rows}-grown{args.copies}"
    print(json.dumps(grow(work / f"db-{args.rows}", dst, args.copies)), flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDPIPE_")}
    env.update(HF_HUB_OFFLINE="1", EMBEDPIPE_MODEL__EXPORT_DIR=str(work / "exports"))
    words = [w for w in scale.vocabulary() if len(w) > 4][:500]
    _, _, out = scale.proc(
        [sys.executable, "-c", scale.SEARCH_SCRIPT, str(dst), json.dumps(words), ",".join(scale.MODES)],
        env,
        work,
    )
    print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
