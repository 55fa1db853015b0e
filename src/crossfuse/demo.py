"""`crossfuse demo`: single modalities vs every fusion method on the bundled digits set, one table."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from crossfuse.compare import run_comparison
from crossfuse.config import load_yaml, parse_config
from crossfuse.data.demo import build_digits_demo

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).parent / "resources" / "demo.yaml"


def run_demo(out: str | Path = "runs/demo", data_dir: str | Path = "data/demo",
             fusions: Optional[Sequence[str]] = None, epochs: Optional[int] = None, seeds: Sequence[int] = (0,)
             ) -> List[Dict]:
    """Build the demo data (once), then compare each single modality and each fusion method."""
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        log.info("Building the demo data set in %s", data_dir)
        build_digits_demo(data_dir, seed=0)
    raw = load_yaml(DEMO_CONFIG)
    raw["data"]["manifest"] = str(manifest)
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    return run_comparison(parse_config(raw), out, fusions=fusions, seeds=seeds, save_runs=True)
