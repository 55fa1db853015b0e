"""Data: manifests, validation, splits, processors and the streaming dataset."""
from crossfuse.data.dataset import Collator, ManifestDataset
from crossfuse.data.manifest import infer_modalities, manifest_chunks, read_manifest
from crossfuse.data.pairs import is_flickr_dir, read_captions, read_flickr
from crossfuse.data.processors import PROCESSORS, Processor, processor_from_state
from crossfuse.data.split import split_frame
from crossfuse.data.validate import (apply_policy, check_columns, duplicate_ids, find_problems, label_str,
                                     missing_cells, unseen_labels, usable_rows)

__all__ = ["apply_policy", "check_columns", "Collator", "duplicate_ids", "find_problems", "infer_modalities", "is_flickr_dir",
           "label_str", "ManifestDataset", "missing_cells", "Processor", "processor_from_state", "PROCESSORS",
           "manifest_chunks", "read_captions", "read_flickr", "read_manifest", "split_frame", "unseen_labels", "usable_rows"]
