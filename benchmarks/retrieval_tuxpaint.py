"""Tux Paint caption <-> image retrieval: crossfuse's contrastive model vs a ridge-map reference.

    python benchmarks/retrieval_tuxpaint.py --seeds 0 1 2

Held out: the manifest's test split (393 stamps, half the set), each caption a query against all
393 test images (and each image against all captions); relevance is the item's own pair. crossfuse
chooses the epoch count on the val split, then refits on train + val (the config's train.refit);
once with the learned space alone, once with the zero-shot class-name bridge (retrieval.bridge).
The reference maps EfficientNet-Lite0 features into MiniLM's space with ridge regression (alpha by
cross-validation on train + val) and ranks by cosine, on the same split and features.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from crossfuse.config import load_config
from crossfuse.engine import train_retrieval
from crossfuse.metrics import retrieval_metrics

HERE = Path(__file__).resolve().parent
# what each model adds to the config: the learned space alone, and with the zero-shot class-name bridge
VARIANTS = {"infonce": ["retrieval.bridge=null"], "infonce+bridge": []}


def ridge_reference(run) -> dict:
    """Ridge from image features to text features on train+val, evaluated text->image on test."""
    from sklearn.linear_model import RidgeCV

    from crossfuse.engine.pipeline import load_table

    retriever = run.retriever
    cfg = load_config(ARGS.config, ARGS.overrides)
    df, base_dir, _ = load_table(cfg)
    train = df[df["split"] != "test"]
    test = df[df["split"] == "test"]

    def feats(frame, m):
        from crossfuse.engine.extract import cache_modalities

        cached = cache_modalities(retriever.model, {m: retriever.processors[m]}, frame, base_dir,
                                  retriever.cache_root, progress=False)[m]
        return np.stack([cached.store.get(cached.keys[int(r)]) for r in frame.index])

    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(feats(train, "image"), feats(train, "text"))
    mapped, text = ridge.predict(feats(test, "image")), feats(test, "text")
    g = np.arange(len(test))
    return {"text->image": retrieval_metrics(text, mapped, g, g), "image->text": retrieval_metrics(mapped, text, g, g),
            "alpha": float(ridge.alpha_)}


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=HERE / "configs" / "tuxpaint_retrieval.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    ARGS = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"torch {torch.__version__}; config {ARGS.config}")
    results, run = {}, None
    for variant, extra in VARIANTS.items():
        rows = results.setdefault(variant, [])
        for seed in ARGS.seeds:
            out = f"runs/tuxpaint-retrieval/{variant}-seed{seed}"
            cfg = load_config(ARGS.config, ARGS.overrides + extra + [f"train.seed={seed}", "train.progress=false",
                                                                     f"output_dir={out}"])
            start = time.perf_counter()
            run = train_retrieval(cfg)
            d = run.metrics["directions"]
            rows.append(d)
            scores = "; ".join(f"{k} R@1 {v['recall@1']:.3f} R@5 {v['recall@5']:.3f} R@10 {v['recall@10']:.3f}"
                               for k, v in d.items())
            print(f"{variant} seed {seed}: {time.perf_counter() - start:.1f} s, epochs chosen on val "
                  f"{run.train.best_epoch}; {scores}", flush=True)
    ref = ridge_reference(run)
    print("\n| model | direction | queries | R@1 | R@5 | R@10 | median rank | mAP |\n|---|---|---|---|---|---|---|---|")
    for direction in ("text->image", "image->text"):
        for variant, rows in results.items():
            vals = {k: np.array([r[direction][k] for r in rows]) for k in ("recall@1", "recall@5", "recall@10",
                                                                          "median_rank", "mAP")}
            def cell(k):
                return f"{vals[k].mean():.3f} ± {vals[k].std():.3f}" if len(rows) > 1 else f"{vals[k][0]:.3f}"
            print(f"| crossfuse {variant} ({len(rows)} seeds) | {direction} | {rows[0][direction]['queries']} | "
                  f"{cell('recall@1')} | {cell('recall@5')} | {cell('recall@10')} | {vals['median_rank'].mean():.1f} "
                  f"| {cell('mAP')} |")
        r = ref[direction]
        print(f"| ridge map (alpha {ref['alpha']:g}) | {direction} | {r['queries']} | {r['recall@1']:.3f} | "
              f"{r['recall@5']:.3f} | {r['recall@10']:.3f} | {r['median_rank']:.1f} | {r['mAP']:.3f} |")
    print("issue reference (ridge, 393 queries): text->image R@1 0.135, R@5 0.318, R@10 0.427")
    print(f"results grid: {run.output_dir / 'search_examples.png'}")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
