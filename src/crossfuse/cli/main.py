"""The `crossfuse` command line: train, evaluate, predict, index, search, validate, list, cache, compare, serve,
demo."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from crossfuse.errors import CrossfuseError

log = logging.getLogger("crossfuse")
DEFAULT_INDEX = Path("runs/latest/index")  # `crossfuse index runs/latest/model ...` writes it (output_dir default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossfuse", description="Cross-modal fusion: train, evaluate and apply "
                                "models over image, text, audio and tabular data.")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--threads", type=int, help="threads for torch and file decoding (default: OMP_NUM_THREADS, "
                   "else torch's default); a config's train.threads wins for its run")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", type=Path)
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. fusion.name=attention")
    t.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.safetensors")

    e = sub.add_parser("evaluate", help="score a saved model on a labelled manifest")
    e.add_argument("model", type=Path, help="model directory (config.json + model.safetensors)")
    e.add_argument("manifest", type=Path)
    e.add_argument("--out", type=Path, help="report directory (default: MODEL/../eval-MANIFEST)")
    e.add_argument("--robustness", action="store_true",
                   help="also score with each modality removed and corrupted at rising strength")
    e.add_argument("--group-column", help="retrieval models: rows sharing this column's value are relevant to "
                   "each other (default: the training config's retrieval.group_column)")
    _run_options(e)

    r = sub.add_parser("predict", help="write predictions for a manifest to CSV")
    r.add_argument("model", type=Path)
    r.add_argument("manifest", type=Path)
    r.add_argument("--out", type=Path, required=True, help="CSV file to write")
    r.add_argument("--chunk-rows", type=int, default=100_000,
                   help="rows read and predicted at a time (only the model's columns are read; memory stays "
                   "bounded by a chunk)")
    _run_options(r)

    im = sub.add_parser("imagine", help="imagine one modality's features from each row's others (a model trained "
                        "with missing.imagine) and find the nearest real items to them")
    im.add_argument("model", type=Path)
    im.add_argument("manifest", type=Path, help="rows to imagine for (the modality itself may be absent)")
    im.add_argument("--modality", required=True, help="the modality to imagine")
    im.add_argument("--out", type=Path, help="output directory (default: MODEL/../imagine-MODALITY)")
    im.add_argument("--gallery", type=Path, help="manifest of the real items to search among (default: MANIFEST)")
    im.add_argument("--top", type=int, default=5, help="nearest real items per row (0: none)")
    im.add_argument("--grid-rows", type=int, default=8, help="rows drawn in neighbours.png")
    im.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    im.add_argument("--on-bad-item", choices=["error", "skip", "missing"], default="error")
    _outside_option(im)

    ix = sub.add_parser("index", help="index a collection with a trained retrieval model")
    ix.add_argument("model", type=Path, help="retrieval model directory")
    ix.add_argument("manifest", type=Path, help="manifest (or Flickr folder) of the items to index")
    ix.add_argument("--out", type=Path, help="index directory (default: MODEL/../index)")
    ix.add_argument("--modality", help="which modality to index (default: the first non-text one)")
    ix.add_argument("--kind", choices=["exact", "ivf", "hnsw"], default="exact",
                    help="exact search, or approximate with FAISS (IVF cells or an HNSW graph)")
    ix.add_argument("--add", action="store_true", help="add to the index at --out instead of replacing it")
    ix.add_argument("--nlist", type=int, help="IVF cells (default about 4 sqrt(n))")
    ix.add_argument("--nprobe", type=int, help="IVF cells visited per query (default 32)")
    ix.add_argument("--ef-search", type=int, help="HNSW candidates per query (default 128)")
    ix.add_argument("--batch-size", type=int, default=64)
    ix.add_argument("--num-workers", type=int, default=0)
    _outside_option(ix)

    se = sub.add_parser("search", help="search an index with text, or with an image/audio file",
                        usage="crossfuse search [INDEX] QUERY [QUERY ...] [options]")
    se.add_argument("queries", nargs="+", metavar="[INDEX] QUERY",
                    help=f"an index directory made by `crossfuse index` (default: {DEFAULT_INDEX}), then "
                    "sentences or file paths (a file that exists is used as a file)")
    se.add_argument("--top", type=int, default=10)
    se.add_argument("--modality", help="the queries' modality (default: from the query)")
    se.add_argument("--model", type=Path, help="model directory (default: the one the index was built with)")
    se.add_argument("--grid", type=Path, help="also draw the queries and their results into this PNG")
    se.add_argument("--json", action="store_true", help="print the results as JSON")

    v = sub.add_parser("validate", help="check a config and its manifest without training")
    v.add_argument("config", type=Path)
    v.add_argument("overrides", nargs="*")

    ls = sub.add_parser("list", help="list registered encoders and fusion methods")
    ls.add_argument("pattern", nargs="?", default="*", help="glob, e.g. '*net*'")

    k = sub.add_parser("cache", help="inspect or clear the embedding cache")
    k.add_argument("action", choices=["info", "clear"])
    k.add_argument("--dir", type=Path, help="cache directory (default: $CROSSFUSE_CACHE or ~/.cache/crossfuse/embeddings)")
    k.add_argument("--namespace", help="clear only this namespace (as listed by info)")

    c = sub.add_parser("compare", help="train every fusion method and each single modality over several seeds")
    c.add_argument("config", type=Path)
    c.add_argument("overrides", nargs="*")
    c.add_argument("--out", type=Path, help="default: the config's output_dir + '-compare'")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--fusions", help="comma-separated fusion methods (default: every registered one)")
    c.add_argument("--no-singles", action="store_true", help="skip the single-modality baselines")
    c.add_argument("--save-runs", action="store_true", help="keep every run's model and report")
    c.add_argument("--ensemble", action="store_true", help="also the greedy ensemble of each seed's fusion models, "
                   "weighted on validation (keeps the runs)")

    tu = sub.add_parser("tune", help="search hyperparameters with Optuna (the config's tune.space), then refit "
                        "the best")
    tu.add_argument("config", type=Path)
    tu.add_argument("overrides", nargs="*", help="key.sub=value overrides, as for train")
    tu.add_argument("--trials", type=int, help="the study's total number of trials (default: tune.trials)")
    tu.add_argument("--timeout", type=float, help="seconds each worker may search")
    tu.add_argument("--storage", help="Optuna storage: a journal file path (default: OUTPUT_DIR/tune/journal.log) "
                    "or a database URL (postgresql://..., mysql://...) for several machines")
    tu.add_argument("--study", help="study name (default: the output_dir's name); the same name continues it")
    tu.add_argument("--jobs", type=int, default=1, help="worker processes on this machine, one study")
    tu.add_argument("--no-refit", action="store_true", help="write trials.csv, best.yaml and plots only")
    tu.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)

    en = sub.add_parser("ensemble", help="combine saved models into one: mean, greedy selection or stacking")
    en.add_argument("models", type=Path, nargs="+", help="model directories (same modalities and processors)")
    en.add_argument("--fit-on", type=Path, required=True, help="labelled manifest the weights are fitted on; "
                    "rows the members did not train on (their validation data)")
    en.add_argument("--out", type=Path, required=True, help="the ensemble's model directory")
    en.add_argument("--method", choices=["mean", "greedy", "stack"], default="greedy",
                    help="mean of probabilities; greedy forward selection with replacement (Caruana); or a "
                    "logistic/ridge meta-learner with out-of-fold scores (default: greedy)")
    en.add_argument("--rounds", type=int, default=25, help="greedy: selection rounds")
    en.add_argument("--folds", type=int, default=5, help="stack: cross-fitting folds for the out-of-fold score")
    en.add_argument("--on-bad-item", choices=["error", "skip", "missing"], default="error")

    for name, what in (("encrypt", "encrypt a model directory at rest (AES-256-GCM; key from $CROSSFUSE_KEY)"),
                       ("decrypt", "write an encrypted model directory's plain files back")):
        cr = sub.add_parser(name, help=what)
        cr.add_argument("model", type=Path, help="model directory")
        cr.add_argument("--key-file", type=Path, help="file holding the base64 key (default: $CROSSFUSE_KEY)")
    kg = sub.add_parser("keygen", help="print a new random key for encrypt/decrypt (keep it secret)")
    kg.add_argument("--out", type=Path, help="write it to this file (mode 600) instead of printing it")

    an = sub.add_parser("anonymize", help="a copy of a manifest and its files with personal data in text replaced "
                        "(<PERSON>) and faces blurred, plus a report of what was replaced")
    an.add_argument("manifest", type=Path, help="CSV, JSONL or Parquet manifest")
    an.add_argument("--out", type=Path, required=True, help="new directory for the manifest, files and report")
    an.add_argument("--text-columns", nargs="+", help="text columns to anonymise (default: those inferred as text)")
    an.add_argument("--image-columns", nargs="+", help="image columns (default: those inferred as images)")
    an.add_argument("--exclude", nargs="+", default=[], help="columns never anonymised (the label, an id)")
    an.add_argument("--detector", choices=["auto", "presidio", "regex"], default="auto",
                    help="presidio (with spaCy) or patterns only; auto: presidio when installed (default)")
    an.add_argument("--entities", nargs="+", help="entity types to replace (default: crossfuse's list; see "
                    "docs/privacy.md)")
    an.add_argument("--score-threshold", type=float, default=0.35, help="presidio: lowest confidence replaced")
    an.add_argument("--faces", choices=["blur", "box", "none"], default="blur", help="what to do with faces")
    an.add_argument("--allow-outside-paths", action="store_true", help="read files outside the manifest's folder")
    an.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    sv = sub.add_parser("serve", help="serve a model (and search indexes) over HTTP: REST API and a web page")
    sv.add_argument("model", type=Path, help="model directory (fusion or retrieval)")
    sv.add_argument("--index", action="append", default=[], metavar="[NAME=]DIR",
                    help="a search index to serve (repeatable); named after its folder unless NAME= is given")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers-threads", type=int, help="torch threads of the inference worker")
    sv.add_argument("--tls-cert", type=Path, help="PEM certificate (with --tls-key)")
    sv.add_argument("--tls-key", type=Path, help="PEM private key")
    sv.add_argument("--tls-self-signed", action="store_true", help="make a development certificate and print "
                    "its fingerprint")
    sv.add_argument("--api-keys-file", type=Path, help="API keys, one per line (also $CROSSFUSE_API_KEYS, "
                    "comma-separated)")
    sv.add_argument("--insecure", action="store_true", help="listen beyond loopback without TLS or keys")
    sv.add_argument("--max-batch", type=int, default=32, help="items per forward pass when requests are "
                    "batched (1: no dynamic batching)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    sv.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body")
    sv.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for inference")
    sv.add_argument("--cors-origin", action="append", default=[], help="let pages from this origin call the API "
                    "(repeatable; none by default)")

    d = sub.add_parser("demo", help="build the digits demo and compare single modalities with fusion")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--data", type=Path, default=Path("data/demo"))
    d.add_argument("--epochs", type=int)
    d.add_argument("--fusions", help="comma-separated fusion methods (default: every registered one)")
    return p


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-bad-item", choices=["error", "skip", "missing"], default="error")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    _outside_option(p)


def _outside_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="let the manifest's file paths point outside its folder (absolute or '..'); only for "
                   "manifests you trust")


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", force=True)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise CrossfuseError(f"--threads must be >= 1. Got {args.threads}.")
            from crossfuse.threads import set_threads

            set_threads(args.threads)
        return COMMANDS[args.command](args)
    except CrossfuseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    from crossfuse.config import load_config
    from crossfuse.engine import run_task, task_for

    cfg = load_config(args.config, args.overrides)
    task = task_for(cfg)
    run = run_task(task, cfg, resume=args.resume)
    print(f"model: {run.model_dir}\nreport: {run.output_dir / 'summary.md'}\n"
          f"test: {json.dumps(task.headline(run.metrics))}")
    return 0


def cmd_evaluate(args) -> int:
    from crossfuse.engine.run import task_for_model

    out = args.out or args.model.parent / f"eval-{args.manifest.stem}"
    options = {k: getattr(args, k) for k in ("on_bad_item", "batch_size", "num_workers", "robustness",
                                             "group_column", "allow_outside_paths")}
    m = task_for_model(args.model).evaluate_saved(args.model, args.manifest, out, options)
    from crossfuse.engine.distributed import is_main

    if is_main():  # under torchrun rank 0 wrote the report
        print((out / "summary.md").read_text())
        print(f"report: {out}")
    return 0 if m else 1


def cmd_predict(args) -> int:
    from crossfuse.engine import read_and_predict

    written = read_and_predict(args.model, args.manifest, args.out, args.on_bad_item, args.batch_size,
                               args.num_workers, allow_outside_paths=args.allow_outside_paths,
                               chunk_rows=args.chunk_rows)
    from crossfuse.engine.distributed import is_main

    if is_main():  # under torchrun rank 0 wrote the file
        print(f"wrote {written} predictions to {args.out}")
    return 0


def cmd_imagine(args) -> int:
    from crossfuse.engine.imagine import imagine_manifest

    out = args.out or args.model.parent / f"imagine-{args.modality}"
    s = imagine_manifest(args.model, args.manifest, args.modality, out, gallery=args.gallery, top=args.top,
                         grid_rows=args.grid_rows, on_bad_item=args.on_bad_item,
                         allow_outside_paths=args.allow_outside_paths, overwrite=args.overwrite)
    print(f"imagined {s['modality']} for {s['rows']} rows ({s['dim']}-d)" +
          (f"; {s['left_out']} left out (no other modality)" if s["left_out"] else ""))
    if "recall_at_1" in s:
        at_k = s[f"recall_at_{s['top']}"]
        print(f"own real item among the nearest: recall@1 {s['recall_at_1']:.3f}, recall@{s['top']} {at_k:.3f} "
              f"(chance@1 {s['chance_at_1']:.4f}, {s['gallery_items']} real items)")
    print(f"wrote {out}: imagined.npy, imagined.csv" + (", neighbours.csv, neighbours.png" if args.top else ""))
    return 0


def cmd_index(args) -> int:
    from crossfuse.engine import index_manifest

    params = {k: v for k, v in (("nlist", args.nlist), ("nprobe", args.nprobe), ("ef_search", args.ef_search))
              if v is not None}
    out = args.out or args.model.parent / (f"index-{args.modality}" if args.modality else "index")
    index = index_manifest(args.model, args.manifest, out, args.modality, args.kind, add=args.add,
                           batch_size=args.batch_size, num_workers=args.num_workers,
                           allow_outside_paths=args.allow_outside_paths, **params)
    from crossfuse.engine.distributed import is_main

    if is_main():
        print(f"index: {out} ({len(index)} {index.meta['modality']} items, {index.kind}, {index.backend})")
    return 0


def cmd_search(args) -> int:
    from crossfuse.engine import search_index

    first = Path(args.queries[0])
    if (first / "index.json").is_file():
        index, queries = first, args.queries[1:]
    else:  # no index given: the one `crossfuse index` writes beside the default output_dir's model
        index, queries = DEFAULT_INDEX, args.queries
        if not (index / "index.json").is_file():
            raise CrossfuseError(f"no index given and none at {index}: pass the directory `crossfuse index` wrote "
                                 "as the first argument")
    if not queries:
        raise CrossfuseError("give at least one query after the index directory")
    args.queries = queries
    hits = search_index(index, queries, args.top, args.modality, args.model, args.grid)
    if args.json:
        print(json.dumps([{"query": q, "results": h} for q, h in zip(args.queries, hits)], indent=2))
    else:
        for q, hs in zip(args.queries, hits):
            print(f"query: {q}")
            for h in hs:
                extra = "  ".join(f"{k}={v}" for k, v in h.items() if k not in ("rank", "score", "value", "row"))
                where = f"row {h['row']}" + (f"  {extra}" if extra else "")
                print(f"  {h['rank']:>3}. {h['score']:.4f}  {h['value']}  ({where})")
    if args.grid:
        print(f"grid: {args.grid}")
    return 0


def cmd_validate(args) -> int:
    from crossfuse.config import load_config
    from crossfuse.data import apply_policy
    from crossfuse.engine.run import load_table, plan_problems, privacy_problems, task_for, validate_data

    cfg = load_config(args.config, args.overrides)
    df, base_dir, file = load_table(cfg)
    task = task_for(cfg)
    cfg = task.resolve(cfg, df, flickr=Path(cfg.data.manifest).is_dir())
    if cfg.data.anonymize is not None:  # the columns it names, and OpenCV for faces (the text is not scanned)
        from crossfuse.data.anonymize import column_problems, with_faces
        from crossfuse.errors import ConfigError

        if column_problems(cfg.data.anonymize, cfg.modalities):
            raise ConfigError(column_problems(cfg.data.anonymize, cfg.modalities))
        cfg = dataclasses.replace(cfg, modalities=with_faces(cfg.modalities, cfg.data.anonymize))
    _, problems = validate_data(cfg, df, base_dir, file)
    for m, mc in cfg.modalities.items():
        print(f"modality {m}: {mc.kind} {mc.columns} -> encoder {mc.encoder.name}")
    head = task.summary(cfg)
    print(f"{head}; rows: {len(df)}")
    usable = df
    if problems and cfg.data.on_bad_item != "error":
        usable, _ = apply_policy(df, problems, cfg.data.on_bad_item, cfg.data.target)
    fatal, warnings = plan_problems(task, cfg, usable, file)
    for p in warnings:
        print(f"  warning: {p}")
    if not fatal:
        fatal = privacy_problems(task, cfg, usable, base_dir, file)
    if fatal:
        print(f"{len(fatal)} problem(s) training would stop at:")
        for p in fatal:
            print(f"  - {p}")
        return 1
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        print(f"on_bad_item={cfg.data.on_bad_item}: training would "
              + {"error": "stop", "skip": "skip those rows",
                 "missing": "treat the bad cells as missing"}[cfg.data.on_bad_item])
        return 1
    print("config and manifest OK")
    return 0


def cmd_list(args) -> int:
    from crossfuse import ENCODERS, FUSIONS

    for title, reg in (("encoders", ENCODERS), ("fusion methods", FUSIONS)):
        print(f"{title}:")
        for name in reg.names(args.pattern):
            cls = reg.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            kind = f"[{cls.modality}] " if getattr(cls, "modality", "") else ""
            print(f"  {name:<22}{kind}{doc}")
    return 0


def cmd_cache(args) -> int:
    from crossfuse.cache import clear, default_root, namespaces

    root = args.dir or default_root()
    if args.action == "clear":
        print(f"removed {clear(root, args.namespace)} files from {root}")
        return 0
    stores = namespaces(root)
    print(f"cache: {root}")
    print("| namespace | encoder | dim | entries | shards | orphans | MiB |\n|---|---|---|---|---|---|---|")
    for st in stores:
        i = st.info()
        entries = "? (encrypted; no key)" if i["entries"] is None else f"{i['entries']}" + (
            " (encrypted)" if i["encrypted"] else "")
        print(f"| {i['namespace']} | {i.get('encoder', '?')} | {i.get('dim', '?')} | {entries} | {i['shards']} "
              f"| {i['orphans']} | {i['bytes'] / 2**20:.1f} |")
    print(f"{len(stores)} namespace(s), {sum(len(s) for s in stores)} vectors")
    return 0


def cmd_compare(args) -> int:
    from crossfuse.compare import comparison_table, run_comparison
    from crossfuse.config import load_config

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path(f"{cfg.output_dir}-compare")
    fusions = args.fusions.split(",") if args.fusions else None
    rows = run_comparison(cfg, out, fusions=fusions, seeds=args.seeds, singles=not args.no_singles,
                          save_runs=args.save_runs, ensemble=args.ensemble)
    print(comparison_table(rows))
    print(f"\ncomparison: {out}/comparison.md, {out}/comparison.png, {out}/comparison.json")
    return 0


def cmd_tune(args) -> int:
    from crossfuse.engine.tune import finish, run_workers, setup, work

    if args.jobs < 1:
        raise CrossfuseError(f"--jobs must be >= 1. Got {args.jobs}.")
    s = setup(args.config, args.overrides, args.trials, args.timeout, args.storage, args.study)
    if args.worker:  # a child started by --jobs: search, leave the outputs to the parent
        work(s, args.worker, progress=False)
        return 0
    passed = [f"--{k}={v}" for k, v in (("trials", args.trials), ("timeout", args.timeout),
                                         ("storage", args.storage), ("study", args.study)) if v is not None]
    run_workers(s, args.config, args.overrides, args.jobs, passed, progress=not args.quiet)
    result = finish(s, refit=not args.no_refit)
    b = result.summary
    score = b[f"best_val_{b['monitor']}"]
    print(f"trials: {b['trials']}\nbest: trial {b['best_trial']} {b['monitor']}={score} {json.dumps(b['best_params'])}")
    print(f"outputs: {result.out}/trials.csv, best.yaml, history.png, slices.png, tune.json")
    if result.model_dir:
        print(f"model: {result.model_dir}\ntest: {json.dumps(b['refit_test'])}")
    if "ensemble" in b:
        e = b["ensemble"]
        print(f"ensemble of the best {len(e['members'])}: {result.out / 'ensemble'}; {e['metric']} val {e['val']:.4f}"
              + (f", test {e['test_ensemble']:.4f} (best single {e['test_best']:.4f})" if "test_ensemble" in e else ""))
    return 0


def cmd_ensemble(args) -> int:
    from crossfuse.engine.ensemble import build_ensemble

    r = build_ensemble(args.models, args.fit_on, args.out, args.method, folds=args.folds, rounds=args.rounds,
                       on_bad_item=args.on_bad_item)
    print(f"{r['metric']} on {args.fit_on} ({r['rows']} rows):")
    for d, v in r["members"].items():
        weight = "" if r["method"] == "stack" else f"  weight {r['weights'][d]:.3f}"
        print(f"  {v:.4f}{weight}  {d}")
    print(f"  {r['ensemble']:.4f}  ensemble ({r['method']}" + (f"; out-of-fold {r['out_of_fold']:.4f}" if
                                                            "out_of_fold" in r else "") + ")")
    print(f"model: {args.out}")
    return 0


def cmd_encrypt(args) -> int:
    from crossfuse.encryption import encrypt_directory, load_key

    names = encrypt_directory(args.model, load_key(args.key_file, what="encrypt"))
    print(f"encrypted {len(names)} files in {args.model} ({', '.join(names)}); loading it needs the key")
    return 0


def cmd_decrypt(args) -> int:
    from crossfuse.encryption import decrypt_directory, load_key

    names = decrypt_directory(args.model, load_key(args.key_file, what=str(args.model)))
    print(f"decrypted {len(names)} files in {args.model}")
    return 0


def cmd_keygen(args) -> int:
    import os

    from crossfuse.encryption import new_key

    key = new_key()
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        print(f"key written to {args.out}")
    else:
        print(key)
    return 0


def cmd_anonymize(args) -> int:
    from crossfuse.config.io import anonymize_problems
    from crossfuse.config.schema import AnonymizeConfig, Config, DataConfig
    from crossfuse.data.anonymize import anonymize_manifest
    from crossfuse.errors import ConfigError

    settings = AnonymizeConfig(detector=args.detector, entities=args.entities, score_threshold=args.score_threshold,
                               faces=None if args.faces == "none" else args.faces)
    problems = anonymize_problems(Config(data=DataConfig(anonymize=settings)))
    if problems:
        raise ConfigError([p.replace("'data.anonymize.score_threshold'", "--score-threshold")
                           .replace("'data.anonymize.entities'", "--entities") for p in problems])
    report = anonymize_manifest(args.manifest, args.out, settings, args.text_columns, args.image_columns,
                                args.exclude, args.allow_outside_paths, args.overwrite, progress=not args.quiet)
    for col, s in report["columns"].items():
        if s["kind"] == "text":
            found = ", ".join(f"{k} {v}" for k, v in s["entities"].items()) or "nothing"
            print(f"{col} (text, {s['detector']}): {s['cells_changed']} of {report['rows']} cells changed; {found}")
        else:
            print(f"{col} (image): {s['faces']} face(s) hidden in {s['images_changed']} of {s['images']} images")
    print(f"wrote {args.out / args.manifest.name}, its files and anonymize_report.csv/.json (counts and types, "
          "never the values)")
    return 0


def cmd_serve(args) -> int:
    from crossfuse.serve.server import index_args, serve

    if args.max_batch < 1 or args.workers_threads is not None and args.workers_threads < 1:
        raise CrossfuseError("--max-batch and --workers-threads must be >= 1")
    serve(args.model, index_args(args.index), host=args.host, port=args.port, threads=args.workers_threads,
          tls_cert=args.tls_cert, tls_key=args.tls_key, tls_self_signed=args.tls_self_signed,
          api_keys_file=args.api_keys_file, insecure=args.insecure, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, max_body_mb=args.max_body_mb, timeout_s=args.timeout,
          cors_origins=args.cors_origin)
    return 0


def cmd_demo(args) -> int:
    from crossfuse.compare import comparison_table
    from crossfuse.demo import run_demo

    fusions = args.fusions.split(",") if args.fusions else None
    rows = run_demo(args.out, args.data, epochs=args.epochs, fusions=fusions)
    print(comparison_table(rows))
    print(f"\nreports: {args.out}/<model>/seed0/summary.md; comparison: {args.out}/comparison.md, "
          f"{args.out}/comparison.png")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "imagine": cmd_imagine, "index": cmd_index,
            "search": cmd_search, "validate": cmd_validate, "list": cmd_list, "cache": cmd_cache,
            "compare": cmd_compare, "tune": cmd_tune, "ensemble": cmd_ensemble, "serve": cmd_serve, "demo": cmd_demo,
            "encrypt": cmd_encrypt, "decrypt": cmd_decrypt, "keygen": cmd_keygen, "anonymize": cmd_anonymize}

if __name__ == "__main__":
    sys.exit(main())
