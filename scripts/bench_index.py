"""What a saved support index costs and gives on many classes, measured in one run on a trained run.

    python scripts/bench_index.py RUN [classes=10000] [queries=2000] [batch=256] [threads=1]

Support: `classes` procedurally generated glyph classes (metalearn.data.synthetic, a generator seed of their own,
so none is a class the run trained on), one image each; queries: another rendering of the first `queries`
classes. Encodes the support set once and saves it (save_index), loads it back, then classifies the queries
against it in batches (metalearn.support_index.top_k, chunks of 2,048 classes), and again through the fitted
learner's full softmax for the same answers. Prints seconds, queries per second, the index file's size, the
process's peak memory and top-1 / top-5 accuracy.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> None:
    from metalearn.api import load_run
    from metalearn.data.synthetic import generate
    from metalearn.support_index import SupportIndex

    run, keys = argv[0], dict(a.split("=", 1) for a in argv[1:])
    classes, queries = int(keys.get("classes", 10_000)), int(keys.get("queries", 2_000))
    batch = int(keys.get("batch", 256))
    torch.set_num_threads(int(keys.get("threads", 1)))
    learner = load_run(run, "last")
    size = learner.spec["image_size"]
    t = time.perf_counter()
    images = generate(classes, 2, size, seed=12345)  # [classes * 2, 1, size, size], two renderings a class
    support, query = images[0::2], images[1::2][:queries]
    names = [f"glyph{c:05d}" for c in range(classes)]
    made = time.perf_counter() - t
    print(f"{learner.method.name} from {run}; {classes} classes, {queries} queries at {size} px "
          f"(generated in {made:.1f} s); {torch.get_num_threads()} thread(s); peak memory {peak_mb():.0f} MB")
    t = time.perf_counter()
    learner.fit(support, names)
    index = learner.support_index(run, "last")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "index.npz"
        index.save(path)
        encode_save = time.perf_counter() - t
        file_mb = path.stat().st_size / 2**20
        t = time.perf_counter()
        loaded = SupportIndex.load(path)
        load_s = time.perf_counter() - t
    print(f"support encoded and saved: {encode_save:.2f} s; index file {file_mb:.1f} MB; loaded in {load_s:.3f} s")
    truth = torch.arange(queries)
    before = peak_mb()
    t = time.perf_counter()
    top = [learner.top_k(query[i:i + batch], 5, loaded) for i in range(0, queries, batch)]
    chunked = time.perf_counter() - t
    ids = [[int(n[5:]) for n in row] for part in top for row in part[0]]
    top1 = sum(r[0] == q for r, q in zip(ids, truth.tolist(), strict=True)) / queries
    top5 = sum(q in r for r, q in zip(ids, truth.tolist(), strict=True)) / queries
    print(f"index, chunked top-k: {chunked:.2f} s, {queries / chunked:.0f} queries/s; top-1 {100 * top1:.2f}%, "
          f"top-5 {100 * top5:.2f}%; peak memory {peak_mb():.0f} MB (was {before:.0f})")
    t = time.perf_counter()
    full = [learner.top_k(query[i:i + batch], 5) for i in range(0, queries, batch)]
    whole = time.perf_counter() - t
    same = all(a[0] == b[0] for x, y in zip(top, full, strict=True) for a, b in zip(x[0], y[0], strict=True))
    gap = max(float((x[1] - y[1]).abs().max()) for x, y in zip(top, full, strict=True))
    print(f"fitted learner, full softmax: {whole:.2f} s, {queries / whole:.0f} queries/s; same top-5 classes: {same}, "
          f"largest probability difference {gap:.1e}; peak memory {peak_mb():.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
