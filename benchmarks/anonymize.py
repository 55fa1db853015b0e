"""Anonymisation measured on labelled data the script makes: recall and precision per entity type of
the text detectors, and whether faces are still found after they were hidden.

Text: sentences from templates with known personal data inserted (names, e-mail addresses, phone
numbers, street addresses, dates of birth, social security, card and IBAN numbers, URLs, IP
addresses) and sentences with none (numbers, units, capitalised product names). Two sets from two
seeds: ``val`` chooses presidio's score threshold, ``test`` reports. A true span counts as found
when every letter and digit of it is inside a replacement (a half-removed name leaks); a
replacement is correct when it overlaps a true span.

Faces: scikit-image's astronaut photograph in 12 variants (scaled, flipped, darker, brighter,
rotated, pasted onto other photographs) and 6 packaged photographs without a face; OpenCV's
detector runs again on each hidden image, also at a more sensitive setting.

    python benchmarks/anonymize.py [--n 300]
"""
from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

from crossfuse.config.schema import AnonymizeConfig
from crossfuse.data.anonymize import find_faces, hide_faces, resolve_overlaps, text_detector

FIRST = ["Maria", "John", "Aisha", "Wei", "Olga", "Carlos", "Priya", "James", "Fatima", "Lukas", "Emma", "Kenji",
         "Sofia", "David", "Amara", "Pierre", "Hannah", "Mohammed", "Elena", "Thomas", "Grace", "Ivan", "Chloe", "Omar"]
LAST = ["Garcia", "Smith", "Khan", "Zhang", "Petrova", "Silva", "Sharma", "Brown", "Haddad", "Becker", "Wilson",
        "Tanaka", "Rossi", "Miller", "Okafor", "Dubois", "Schmidt", "Ali", "Popescu", "Anderson", "Murphy", "Novak"]
STREETS = ["Baker Street", "Maple Avenue", "Church Road", "Elm Lane", "Sunset Boulevard", "Oak Drive", "High Street",
           "Park Place", "River Road", "Mill Lane"]
AREAS = [212, 213, 312, 415, 503, 617, 702, 713, 808, 919]  # real US area codes (555 numbers fail validators)
DOMAINS = ["example.com", "mail.example.org", "clinic.example.net", "uni.example.edu"]
PLAIN = ["The scan of the left knee shows {a} small lesions, {b}.{c} mm across.",
         "Dosage is {a}00 mg twice daily for {b} weeks.", "Room {a}0{b} on floor {c} was cleaned at noon.",
         "The Apple Watch and the Galaxy Tab were both returned in box {a}.",
         "Version {a}.{b}.{c} fixed the login bug reported by several users.",
         "Blood pressure {a}20/8{b}, pulse {c}2, temperature normal.",
         "We ordered {a}{b} units at {c}.99 each from the Central Warehouse.",
         "The Thames was high after {a} days of rain in the North.",
         "Great movie, {a} out of 10, the ending in Part {b} was brilliant!",
         "Follow-up in {a} months; no further imaging needed."]


def luhn_number(rng) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    for check in range(10):
        full = digits + [check]
        total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(full)))
        if total % 10 == 0:
            s = "".join(map(str, full))
            return " ".join(s[i:i + 4] for i in range(0, 16, 4))
    raise AssertionError


def iban(rng) -> str:
    bban = "".join(str(rng.randrange(10)) for _ in range(18))
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    s = f"DE{check:02d}{bban}"
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


def values(rng) -> Dict[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    area = rng.randrange(100, 665)
    year, month, day = rng.randrange(1940, 2005), rng.randrange(1, 13), rng.randrange(1, 29)
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"]
    return {
        "PERSON": f"{first} {last}",
        "EMAIL_ADDRESS": f"{first.lower()}.{last.lower()}{rng.randrange(100)}@{rng.choice(DOMAINS)}",
        "PHONE_NUMBER": rng.choice([f"({rng.choice(AREAS)}) {rng.randrange(201, 999)}-{rng.randrange(10000):04d}",
                                    f"+44 20 7946 {rng.randrange(10000):04d}",
                                    f"{rng.choice(AREAS)}-{rng.randrange(201, 999)}-{rng.randrange(10000):04d}",
                                    f"+1 {rng.choice(AREAS)} {rng.randrange(201, 999)} {rng.randrange(10000):04d}"]),
        "STREET_ADDRESS": f"{rng.randrange(1, 2000)} {rng.choice(STREETS)}",
        "DATE_TIME": rng.choice([f"{day:02d}/{month:02d}/{year}", f"{months[month - 1]} {day}, {year}",
                                 f"{year}-{month:02d}-{day:02d}"]),
        "US_SSN": f"{area:03d}-{rng.randrange(10, 99):02d}-{rng.randrange(1000, 9999):04d}",
        "CREDIT_CARD": luhn_number(rng),
        "IBAN_CODE": iban(rng),
        "URL": f"https://{rng.choice(DOMAINS)}/patients/{rng.randrange(10 ** 5)}",
        "IP_ADDRESS": f"{rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
    }


TEMPLATES = [
    "Patient {PERSON}, born {DATE_TIME}, was admitted with chest pain.",
    "My name is {PERSON} and you can reach me at {PHONE_NUMBER}.",
    "Please send the results to {EMAIL_ADDRESS} before Friday.",
    "{PERSON} lives at {STREET_ADDRESS} and works night shifts.",
    "Card {CREDIT_CARD} was declined; the customer's SSN is {US_SSN}.",
    "Refund to IBAN {IBAN_CODE}, account holder {PERSON}.",
    "Logged in from {IP_ADDRESS} and opened {URL} twice.",
    "Dr. {PERSON} reviewed the scan; call {PHONE_NUMBER} with questions.",
    "Contact: {EMAIL_ADDRESS}, phone {PHONE_NUMBER}, address {STREET_ADDRESS}.",
    "Date of birth {DATE_TIME}; social security number {US_SSN}.",
    "So happy with my new phone!! thanks {PERSON} for the tip, follow me at {URL}",
    "Met {PERSON} at the conference; her email is {EMAIL_ADDRESS}.",
]


def make_set(n: int, seed: int) -> List[Tuple[str, List[Tuple[int, int, str]]]]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        if i % 4 == 3:  # a quarter without personal data
            text = rng.choice(PLAIN).format(a=rng.randrange(1, 9), b=rng.randrange(1, 9), c=rng.randrange(1, 9))
            items.append((text, []))
            continue
        template, v = rng.choice(TEMPLATES), values(rng)
        text, spans = "", []
        for part in template.replace("}", "{").split("{"):
            if part in v:
                spans.append((len(text), len(text) + len(v[part]), part))
                text += v[part]
            else:
                text += part
        items.append((text, spans))
    return items


def score(detector, items) -> Tuple[Dict[str, List[int]], Dict[str, List[int]], float]:
    """Per true type [found, total]; per predicted type [correct, total]; seconds per text."""
    recall, precision = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    start = time.perf_counter()
    found_all = [resolve_overlaps(detector.find(text)) for text, _ in items]
    seconds = (time.perf_counter() - start) / len(items)
    for (text, spans), found in zip(items, found_all):
        covered = np.zeros(len(text), bool)
        for f in found:
            covered[f.start:f.end] = True
            precision[f.entity][1] += 1
            precision[f.entity][0] += any(f.start < e and f.end > s for s, e, _ in spans)
        for s, e, entity in spans:
            recall[entity][1] += 1
            recall[entity][0] += all(covered[s + k] for k, c in enumerate(text[s:e]) if c.isalnum())
    return recall, precision, seconds


def total(counts: Dict[str, List[int]]) -> float:
    hit, n = (sum(v[i] for v in counts.values()) for i in (0, 1))
    return hit / n if n else float("nan")


def text_benchmark(n: int) -> None:
    val, test = make_set(n, 0), make_set(n, 1)
    print(f"## Text: {n} sentences per set ({n // 4} without personal data), val seed 0, test seed 1\n")
    print("presidio's score threshold on val:\n\n| threshold | recall | precision |\n|---|---|---|")
    for t in (0.2, 0.35, 0.5, 0.7):
        r, p, _ = score(text_detector(AnonymizeConfig(detector="presidio", score_threshold=t)), val)
        print(f"| {t} | {total(r):.3f} | {total(p):.3f} |")
    default = AnonymizeConfig().score_threshold
    print(f"\ntest set, default threshold {default}:\n")
    results = {name: score(text_detector(AnonymizeConfig(detector=name)), test) for name in ("presidio", "regex")}
    entities = sorted({e for r, _, _ in results.values() for e in r} | {e for _, p, _ in results.values() for e in p})
    print("| entity | presidio recall | presidio precision | regex recall | regex precision |\n|---|---|---|---|---|")
    fmt = lambda c: f"{c[0] / c[1]:.3f} ({c[0]}/{c[1]})" if c[1] else "-"  # noqa: E731
    for e in entities:
        cells = [fmt(results[d][k].get(e, [0, 0])) for d in ("presidio", "regex") for k in (0, 1)]
        print(f"| {e} | " + " | ".join(cells) + " |")
    print("| all | " + " | ".join(f"{total(results[d][k]):.3f}" for d in ("presidio", "regex") for k in (0, 1)) + " |")
    print("\nms per text: " + ", ".join(f"{d} {1000 * results[d][2]:.2f}" for d in results))


def face_images():
    from PIL import Image
    from skimage import data

    face = data.astronaut()
    backgrounds = [data.coffee(), data.chelsea(), data.rocket()]
    pil = Image.fromarray(face)
    variants = {"original": face,
                "half size": np.asarray(pil.resize((256, 256))),
                "three quarters": np.asarray(pil.resize((384, 384))),
                "mirrored": face[:, ::-1].copy(),
                "darker": (face * 0.6).astype(np.uint8),
                "brighter": np.clip(face * 1.3, 0, 255).astype(np.uint8),
                "rotated 8 degrees": np.asarray(pil.rotate(8, fillcolor=(128, 128, 128))),
                "rotated -8 degrees": np.asarray(pil.rotate(-8, fillcolor=(128, 128, 128)))}
    rng = np.random.default_rng(0)
    for i, bg in enumerate(backgrounds + [data.coffee()]):
        canvas = np.asarray(Image.fromarray(bg).resize((640, 480))).copy()
        small = np.asarray(pil.resize((200, 200)))
        y, x = int(rng.integers(0, 280)), int(rng.integers(0, 440))
        canvas[y:y + 200, x:x + 200] = small
        variants[f"pasted on photo {i + 1}"] = canvas
    none = {"coffee": data.coffee(), "cat": data.chelsea(), "rocket": data.rocket(),
            "coins": np.stack([data.coins()] * 3, -1), "motorcycle": data.stereo_motorcycle()[0],
            "hubble": data.hubble_deep_field()}
    return variants, none


def sensitive_faces(pixels: np.ndarray, boxes) -> int:
    """Faces the detector finds at a more sensitive setting than crossfuse's (fewer neighbours,
    finer scale steps) with their centre inside one of ``boxes``: a hidden face found again."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY))
    found = cascade.detectMultiScale(gray, scaleFactor=1.05, minNeighbors=2, minSize=(20, 20))
    return sum(any(bx <= x + w / 2 <= bx + bw and by <= y + h / 2 <= by + bh for bx, by, bw, bh in boxes)
               for x, y, w, h in (found if len(found) else []))


def face_benchmark() -> None:
    variants, none = face_images()
    print(f"\n## Faces: {len(variants)} images with one face, {len(none)} without\n")
    print("A hidden face is looked for again with crossfuse's detector and with a more sensitive setting "
          "(counted inside the hidden region).\n")
    print("| image | faces found | after blur: found (sensitive) | after box: found (sensitive) |\n|---|---|---|---|")
    found = again = again_sensitive = 0
    clock = time.perf_counter()
    for name, pixels in variants.items():
        boxes = find_faces(pixels)
        cells = []
        for mode in ("blur", "box"):
            hidden, _ = hide_faces(pixels, mode)
            n, sensitive = len(find_faces(hidden)), sensitive_faces(hidden, boxes)
            again, again_sensitive = again + n, again_sensitive + sensitive
            cells.append(f"{n} ({sensitive})")
        found += len(boxes) >= 1
        print(f"| {name} | {len(boxes)} | " + " | ".join(cells) + " |")
    seconds = (time.perf_counter() - clock) / (5 * len(variants))
    false = {name: len(find_faces(p)) for name, p in none.items()}
    print(f"\nfaces found in {found}/{len(variants)} face images; hidden faces found again: {again} "
          f"({again_sensitive} at the sensitive setting); false detections in the {len(none)} images without a "
          f"face: {sum(false.values())} ({', '.join(f'{k} {v}' for k, v in false.items())}); "
          f"{1000 * seconds:.0f} ms per detection")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="sentences per text set")
    args = ap.parse_args()
    text_benchmark(args.n)
    face_benchmark()


if __name__ == "__main__":
    main()
