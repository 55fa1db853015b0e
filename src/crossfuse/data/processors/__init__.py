"""Per-modality processors. ``PROCESSORS`` is the registry of modality kinds: each kind is its
processor class, which declares the kind's default encoder, file extensions, column rule,
corruptions and loading. A new kind is one processor module registered here."""
from crossfuse.data.processors.audio import AudioProcessor
from crossfuse.data.processors.base import Processor
from crossfuse.data.processors.image import ImageProcessor
from crossfuse.data.processors.tabular import TabularProcessor
from crossfuse.data.processors.text import TextProcessor

# ordered: inference tries the file kinds first, in this order
PROCESSORS = {p.kind: p for p in (ImageProcessor, TextProcessor, AudioProcessor, TabularProcessor)}
FILE_KINDS = [p for p in PROCESSORS.values() if p.extensions]


def processor_from_state(state) -> Processor:
    return PROCESSORS[state["kind"]].from_state(state)


__all__ = ["FILE_KINDS", "PROCESSORS", "AudioProcessor", "Processor", "ImageProcessor", "TabularProcessor", "TextProcessor",
           "processor_from_state"]
